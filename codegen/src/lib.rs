//! The generator behind `kernels!`: renders the model's op list, for one fixed shape, into a
//! module of fully unrolled kernels (fp32 and Q4.12; scalar, SSE, AVX2, AVX-512, NEON).
//!
//! The proc-macro crate is a thin shell around [`kernels`]; tests and the inspect example call
//! the same functions directly.

pub mod ast;
pub mod attn;
pub mod batch;
pub mod batch_module;
pub mod emit;
pub mod expand;
pub mod f32;
pub mod frame;
mod module;
pub mod q412;
pub mod sample;
pub mod target;
pub mod valid;

pub use expand::KernelId;
pub use microgpt_model::Precision;
pub use target::Target;
pub use valid::Spec;

use microgpt_model::Shape;
use proc_macro2::TokenStream;

/// The macro: parse → validate → expand. Errors become `compile_error!` invocations pointing at
/// the offending tokens.
pub fn kernels(input: TokenStream) -> TokenStream {
    match syn::parse2::<ast::Input>(input).and_then(|ast| valid::validate(&ast)) {
        Ok(spec) => expand::expand(&spec),
        Err(e) => e.to_compile_error(),
    }
}

/// The module `kernels!` generates for `shape`, named `name`, restricted to the kernels `keep`
/// selects.
pub fn generate(name: &str, shape: Shape, keep: impl Fn(KernelId) -> bool) -> TokenStream {
    expand::expand_only(
        &Spec {
            name: emit::ident(name),
            shape,
        },
        keep,
    )
}
