//! Pieces of attention shared by the fp32 and Q4.12 renderers: the per-head reduction of q·K
//! products, and the dispatch on the position to code unrolled for that many cached rows.

use crate::emit::{Body, tree};
use crate::target::Target;
use microgpt_model::Shape;
use microgpt_model::plan::heads_aligned;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

type T = TokenStream;

/// The lane operations a reduction needs, for one element type (f32 or i32).
pub struct LaneOps<'a> {
    pub add: &'a dyn Fn(T, T) -> T,
    pub swap: &'a dyn Fn(T, usize) -> T,
    pub store: &'a dyn Fn(T, T) -> T,
    pub load: &'a dyn Fn(T) -> T,
    /// Scalar addition of two lanes (the memory fallback).
    pub scalar_add: &'a dyn Fn(T, T) -> T,
    /// The scalar element type and its zero.
    pub elem: T,
    pub zero: T,
}

/// Reduces the products `prods` (one register per `lanes` channels) within each head, leaving
/// every head's sum in all of its lanes. Returns one expression per register.
pub fn reduce_heads(t: Target, s: &Shape, body: &mut Body, prods: &[Ident], ops: &LaneOps<'_>) -> Vec<T> {
    let l = t.lanes();
    let hd = s.head_dim();
    let epad = s.embd.next_multiple_of(l);
    if heads_aligned(s, l) {
        let regs_per_head = (hd / l).max(1);
        let mut out = Vec::new();
        for group in prods.chunks(regs_per_head) {
            let mut acc = tree(group.iter().map(|p| quote! { #p }).collect(), ops.add);
            let mut d = 1;
            while d < hd.min(l) {
                let a = body.bind("h", acc);
                acc = (ops.add)(quote! { #a }, (ops.swap)(quote! { #a }, d));
                d *= 2;
            }
            let sum = body.bind("hs", acc);
            out.extend((0..regs_per_head).map(|_| quote! { #sum }));
        }
        return out;
    }
    // Heads straddle registers: reduce through memory, one head at a time.
    let (elem, zero) = (&ops.elem, &ops.zero);
    let pr = body.fresh("pr");
    let sl = body.fresh("sl");
    let stores: Vec<T> = prods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let o = i * l;
            (ops.store)(quote! { #pr.as_mut_ptr().add(#o) }, quote! { #p })
        })
        .collect();
    body.push(
        quote! { let mut #pr = [#zero; #epad]; #(#stores)* let mut #sl: [#elem; #epad] = [#zero; #epad]; },
    );
    for h in 0..s.heads {
        let terms: Vec<T> = (h * hd..h * hd + hd).map(|c| quote! { #pr[#c] }).collect();
        let sum = tree(terms, ops.scalar_add);
        let lanes: Vec<usize> = (h * hd..h * hd + hd).collect();
        body.push(quote! {{ let hs = #sum; #( #sl[#lanes] = hs; )* }});
    }
    (0..prods.len())
        .map(|i| {
            let o = i * l;
            (ops.load)(quote! { #sl.as_ptr().add(#o) })
        })
        .collect()
}

/// `match pos { 0 => at0, 1 => name_at1(args), … }`: attention unrolled for each number of
/// cached rows, so no loop runs over positions and nothing waits on a loop-exit branch. At
/// position 0 the softmax of a single score is exactly 1 and the output is `at0` (the value).
pub fn dispatch(name: &Ident, block: usize, args: T, at0: T) -> T {
    let arms: Vec<T> = (1..block)
        .map(|p| {
            let f = unrolled_name(name, p);
            quote! { #p => #f(#args), }
        })
        .collect();
    quote! {
        match pos {
            0 => #at0,
            #(#arms)*
            // SAFETY: `pos < BLOCK` is checked before every step.
            _ => ::core::hint::unreachable_unchecked(),
        }
    }
}

/// The name of the attention unrolled for positions `0..=pos`.
pub fn unrolled_name(name: &Ident, pos: usize) -> Ident {
    format_ident!("{}_at{}", name, pos)
}

/// How [`unrolled`] renders one layer's attention for a precision.
pub struct Unrolled<'a> {
    pub t: Target,
    pub shape: Shape,
    /// The attention op's name (each unrolled function is named by [`unrolled_name`]).
    pub name: &'a Ident,
    pub attrs: &'a T,
    /// The element type of the cached keys (values are cached as f32), and the type of q and
    /// of the output.
    pub key_elem: T,
    pub ty: T,
    /// One cached row's scores: one expression per register, each head's score in its lanes.
    pub score: &'a dyn Fn(&mut Body, usize) -> Vec<T>,
    /// Output register `i` from the exponentials of register `i`'s column of scores (one per
    /// cached row, in row order).
    pub weigh: &'a dyn Fn(&mut Body, usize, &[Ident]) -> T,
    /// The doc of the function for rows `0..=pos`.
    pub doc: &'a dyn Fn(usize) -> String,
}

/// The attention functions [`dispatch`] calls, for positions `1..block`: per row the scores,
/// per register their max, the max-subtracted exponentials (`exp_v`), and the weighted sum.
pub fn unrolled(u: &Unrolled<'_>) -> Vec<T> {
    let (t, name, attrs, key_elem, ty) = (u.t, u.name, u.attrs, &u.key_elem, &u.ty);
    let regs = u.shape.embd.div_ceil(t.lanes());
    (1..u.shape.block)
        .map(|pos| {
            let mut body = Body::default();
            let scores: Vec<Vec<Ident>> = (0..=pos)
                .map(|row| {
                    let sc = (u.score)(&mut body, row);
                    sc.into_iter().map(|x| body.bind("sc", x)).collect()
                })
                .collect();
            let outs: Vec<T> = (0..regs)
                .map(|i| {
                    let column: Vec<T> = scores
                        .iter()
                        .map(|sc| {
                            let x = &sc[i];
                            quote! { #x }
                        })
                        .collect();
                    let m = body.bind("m", tree(column.clone(), |a, b| t.max(a, b)));
                    let exps: Vec<Ident> = column
                        .into_iter()
                        .map(|x| {
                            let d = t.sub(x, quote! { #m });
                            body.bind("e", quote! { exp_v(#d) })
                        })
                        .collect();
                    (u.weigh)(&mut body, i, &exps)
                })
                .collect();
            let f = unrolled_name(name, pos);
            let doc = (u.doc)(pos);
            let b = body.into_tokens();
            quote! {
                #[doc = #doc]
                #attrs
                unsafe fn #f(kc: *const #key_elem, vc: *const f32, q: #ty) -> #ty {
                    #b
                    [#(#outs),*]
                }
            }
        })
        .collect()
}
