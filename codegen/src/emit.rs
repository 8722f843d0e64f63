//! A statement list under construction, with fresh local names.

use crate::target::Target;
use microgpt_model::numerics::F32Ops;
use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};

/// The body of a generated function.
#[derive(Default)]
pub struct Body {
    stmts: Vec<TokenStream>,
    next: usize,
}

impl Body {
    /// A fresh local name starting with `base`.
    pub fn fresh(&mut self, base: &str) -> Ident {
        self.next += 1;
        format_ident!("{}_{}", base, self.next)
    }

    /// `let <fresh> = expr;`, returning the name.
    pub fn bind(&mut self, base: &str, expr: TokenStream) -> Ident {
        let id = self.fresh(base);
        self.stmts.push(quote! { let #id = #expr; });
        id
    }

    /// A statement as is.
    /// One term of an accumulator chain: `let mut acc = expr;` for the first, `acc = expr;` after
    /// (reassigned, not rebound: a long chain of `let`s nests scopes, which costs the compiler).
    pub fn accumulate(&mut self, acc: &Ident, first: bool, expr: TokenStream) {
        self.push(if first {
            quote! { let mut #acc = #expr; }
        } else {
            quote! { #acc = #expr; }
        });
    }

    pub fn push(&mut self, stmt: TokenStream) {
        self.stmts.push(stmt);
    }

    /// A comment line in the generated code (a doc-less `//` cannot survive tokens, so it is
    /// a no-op string statement that prettyplease prints and the compiler discards).
    pub fn note(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        self.stmts.push(quote! { let _ = #text; });
    }

    pub fn into_tokens(self) -> TokenStream {
        let stmts = self.stmts;
        quote! { #(#stmts)* }
    }
}

/// An identifier for generated items.
pub fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

/// Combines a list of expressions as a balanced tree (`add` joins two).
pub fn tree(
    mut terms: Vec<TokenStream>,
    add: impl Fn(TokenStream, TokenStream) -> TokenStream,
) -> TokenStream {
    while terms.len() > 1 {
        let mut next = Vec::with_capacity(terms.len().div_ceil(2));
        let mut it = terms.into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => next.push(add(a, b)),
                None => next.push(a),
            }
        }
        terms = next;
    }
    terms.pop().expect("at least one term")
}

/// [`F32Ops`] as a Rust expression on `f32` values, one operation per step as written (Rust
/// does not fuse a multiply and an add).
pub struct Expr;

impl F32Ops for Expr {
    type V = TokenStream;
    fn constant(&mut self, x: f32) -> TokenStream {
        quote! { #x }
    }
    fn mul(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        quote! { (#a * #b) }
    }
    fn add(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        quote! { (#a + #b) }
    }
    fn div(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        quote! { (#a / #b) }
    }
    fn sqrt(&mut self, a: TokenStream) -> TokenStream {
        quote! { #a.sqrt() }
    }
}

/// [`F32Ops`] on a target's vectors as one Rust expression, lane by lane (constants are splat
/// vectors).
pub struct Vector(pub Target);

impl F32Ops for Vector {
    type V = TokenStream;
    fn constant(&mut self, x: f32) -> TokenStream {
        self.0.splat(quote! { #x })
    }
    fn mul(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        self.0.mul(a, b)
    }
    fn add(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        self.0.add(a, b)
    }
    fn div(&mut self, a: TokenStream, b: TokenStream) -> TokenStream {
        self.0.div(a, b)
    }
    fn sqrt(&mut self, a: TokenStream) -> TokenStream {
        self.0.sqrt(a)
    }
    fn rsqrt(&mut self, a: TokenStream) -> TokenStream {
        self.0.rsqrt(a)
    }
}
