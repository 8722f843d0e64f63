//! The `kernels!` macro's front end on arbitrary token streams: text that lexes as Rust tokens is
//! parsed and validated; the outcome is a spec or a `compile_error!`, never a panic. (Expansion is
//! left out: a valid spec's kernels are the generators' business, tested elsewhere.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use microgpt_codegen::{ast, valid};
use proc_macro2::TokenStream;
use std::str::FromStr;

fuzz_target!(|text: &str| {
    let Ok(tokens) = TokenStream::from_str(text) else {
        return;
    };
    if let Ok(input) = syn::parse2::<ast::Input>(tokens) {
        match valid::validate(&input) {
            Ok(spec) => {
                let _ = microgpt_codegen::valid::unrolled_size(&spec.shape);
            }
            Err(e) => {
                let _ = e.to_compile_error();
            }
        }
    }
});
