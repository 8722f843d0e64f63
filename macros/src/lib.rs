//! `kernels!`: renders the microGPT op list for one fixed shape into a module of fully unrolled
//! kernels. A thin shell: parsing, validation and expansion live in `microgpt-codegen`, where
//! tests and the inspect example call them directly.
//!
//! ```ignore
//! microgpt_macros::kernels! { name: microgpt_16, vocab: 27, block: 16, embd: 16, heads: 4, layers: 1, mlp: 64 }
//! ```
//!
//! The invoking crate depends on `microgpt-model`, `microgpt-weights` and `microgpt-runtime`
//! (the generated code implements `microgpt_runtime::kernel::Kernel`).

use proc_macro::TokenStream;

/// Generates `pub mod <name>` with one kernel per target and precision, and
/// `<name>::variants()`, their registry entries. An invalid shape is a compile error that names
/// the broken rule and points at the offending field.
#[proc_macro]
pub fn kernels(input: TokenStream) -> TokenStream {
    microgpt_codegen::kernels(input.into()).into()
}
