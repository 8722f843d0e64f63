//! The exponentials and the canonical sampler as generated functions, shared by the fp32,
//! Q4.12 and lane-batched generators.

use crate::emit::{Body, ident, tree};
use crate::target::Target;
use microgpt_model::Shape;
use microgpt_model::numerics::{EXP_MIN, ExpOps, F32Ops, exp_rule, exp2_rule};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

type T = TokenStream;

/// AVX-512 `e^x` for the fp32 kernels: `x = (n + j/16)·ln2 + r` with `|r| ≤ ln2/32`; `2^(j/16)`
/// comes from a 16-entry table held in one register (`vpermps`), `e^r` from a cubic, and `2^n`
/// from `vscalefps`. Shorter than the degree-6 polynomial, and within about 1 ulp.
fn exp_table_avx512(attrs: &T, name: &Ident) -> T {
    let table: Vec<f32> = (0..16).map(|j| (j as f64 / 16.0).exp2() as f32).collect();
    let k = (16.0 * std::f64::consts::LOG2_E) as f32;
    let step = std::f64::consts::LN_2 / 16.0;
    let hi = step as f32;
    let lo = (step - hi as f64) as f32;
    let (neg_hi, neg_lo) = (-hi, -lo);
    let min = EXP_MIN;
    let (c2, c3) = (0.5f32, 1.0f32 / 6.0);
    let t = Target::Avx512;
    let v = t.vf();
    let c = |x: f32| t.splat(quote! { #x });
    let x = t.max(quote! { x }, c(min));
    let n = t.round(t.mul(quote! { x }, c(k)));
    let r = t.fma(quote! { n }, c(neg_hi), quote! { x });
    let r2 = t.fma(quote! { n }, c(neg_lo), quote! { r });
    let j = t.f32_to_i32_round(quote! { n });
    let table = t.vector_of(&table);
    let picked = t.permute(quote! { j }, quote! { table });
    let e = t.mul(quote! { n }, t.splat(quote! { 0.0625 }));
    let p = t.fma(c(c3), quote! { r }, c(c2));
    let one = t.splat(quote! { 1.0 });
    let p2 = t.fma(quote! { p }, quote! { r }, one.clone());
    let p3 = t.fma(quote! { p }, quote! { r }, one);
    let result = t.scalef(t.mul(quote! { t }, quote! { p }), quote! { e });
    quote! {
        /// `e^x` per lane: a 16-entry table of `2^(j/16)` in a register, a cubic for the rest.
        #attrs
        unsafe fn #name(x: #v) -> #v {
            let x = #x;
            let n = #n;
            let r = #r;
            let r = #r2;
            let j = #j;
            let table = #table;
            // vpermps reads the low four bits of each index: j mod 16.
            let t = #picked;
            // vscalefps multiplies by 2^floor(e): floor(n / 16) = j >> 4, n / 16 being exact.
            let e = #e;
            let p = #p;
            let p = #p2;
            let p = #p3;
            #result
        }
    }
}

/// `2^y` per lane (the lane-batched fp32 kernels' softmax weights): `n = round(y)`, the
/// polynomial `EXP2_POLY` of `y - n` in [-1/2, 1/2], times `2^n`. On AVX-512 `vscalefps` applies
/// `2^n` over the whole range (0 below about -150, infinity above 128, NaN for infinite `y`);
/// elsewhere `y` is first clamped to [-126, 126].
pub fn exp2_fn(t: Target, attrs: &T, name: &Ident) -> T {
    let v = t.vf();
    let mut body = Body::default();
    if t != Target::Avx512 {
        let c = |x: f32| t.splat(quote! { #x });
        let clamped = t.max(t.min(quote! { y }, c(126.0)), c(-126.0));
        body.push(quote! { let y = #clamped; });
    }
    let e = exp2_rule(&mut Lanes { t, body: &mut body }, quote! { y });
    let b = body.into_tokens();
    quote! {
        /// `2^y` per lane: `2^round(y)` times a degree-6 polynomial of the rest.
        #attrs
        unsafe fn #name(y: #v) -> #v {
            #b
            #e
        }
    }
}

/// `op` across every lane of `v`, the result in every lane (a butterfly of swaps).
fn allreduce(t: Target, v: T, op: impl Fn(T, T) -> T) -> T {
    let mut acc = v;
    let mut d = t.lanes() / 2;
    while d >= 1 {
        let combined = op(quote! { __a }, t.swap(quote! { __a }, d));
        acc = quote! {{ let __a = #acc; #combined }};
        d /= 2;
    }
    acc
}

/// The sampler of a target (shared by the fp32 and Q4.12 kernels): `softmax(logits / T)` with an
/// unnormalised CDF compared against `r · Σe`.
/// With `prescaled`, the logits arrive already divided by the temperature (the fp32 kernels fold
/// `1/T` into the output head at prepare time); otherwise the sampler multiplies by `inv_t`.
pub fn sample_fn(t: Target, s: &Shape, attrs: &T, prescaled: bool, exp: &Ident) -> T {
    let l = t.lanes();
    let vocab = s.vocab;
    let r = vocab.div_ceil(l);
    let v = t.vf();
    let ty = quote! { [#v; #r] };
    let mut body = Body::default();
    let zs: Vec<Ident> = (0..r)
        .map(|i| {
            let z = if prescaled {
                quote! { logits[#i] }
            } else {
                t.mul(quote! { logits[#i] }, t.splat(quote! { inv_t }))
            };
            body.bind("z", z)
        })
        .collect();
    let valid = |i: usize| vocab.saturating_sub(i * l).min(l);
    let masked: Vec<T> = zs
        .iter()
        .enumerate()
        .map(|(i, z)| t.keep_lanes(quote! { #z }, valid(i), quote! { f32::NEG_INFINITY }))
        .collect();
    let mx = tree(masked, |a, b| t.max(a, b));
    let m = allreduce(t, quote! { mx }, |a, b| t.max(a, b));
    body.push(quote! { let mx = #mx; let m = #m; });
    let mut carry: Option<Ident> = None;
    let mut counts = Vec::new();
    let mut cums = Vec::new();
    let mut exps = Vec::new();
    for (i, z) in zs.iter().enumerate() {
        let d = t.sub(quote! { #z }, quote! { m });
        let e = quote! { #exp(#d) };
        let e = body.bind("e", t.keep_lanes(e, valid(i), quote! { 0.0f32 }));
        exps.push(e.clone());
        let mut c = t.scan(quote! { #e });
        if let Some(prev) = &carry {
            c = t.add(c, t.splat_last(quote! { #prev }));
        }
        let c = body.bind("c", c);
        cums.push(c.clone());
        carry = Some(c);
    }
    // The total, summed beside the scans rather than read off their end.
    let total = tree(exps.iter().map(|e| quote! { #e }).collect(), |a, b| t.add(a, b));
    let total = allreduce(t, total, |a, b| t.add(a, b));
    let thr = t.mul(t.splat(quote! { r }), total);
    body.push(quote! { let thr = #thr; });
    for (i, c) in cums.iter().enumerate() {
        // Only ids 0..vocab-1 are scanned; BOS is what remains.
        let scanned = (vocab - 1).saturating_sub(i * l).min(l);
        if scanned > 0 {
            counts.push(t.count_le(quote! { #c }, quote! { thr }, scanned));
        }
    }
    let b = body.into_tokens();
    let doc = format!(
        "The sampler: `softmax(logits / T)` over {vocab} tokens with an unnormalised CDF \
         compared against `r · Σe`. The first id whose running sum exceeds the threshold equals \
         the number of running sums at or below it (they never decrease), so no scan is needed."
    );
    quote! {
        #[doc = #doc]
        #attrs
        unsafe fn sample(logits: #ty, r: f32, inv_t: f32) -> usize {
            #b
            (0u32 #(+ #counts)*) as usize
        }
    }
}

/// [`ExpOps`] on a target's vectors, as Rust expressions; the values a rule names become
/// locals of `body`.
struct Lanes<'b> {
    t: Target,
    body: &'b mut Body,
}

impl F32Ops for Lanes<'_> {
    type V = T;
    fn constant(&mut self, x: f32) -> T {
        self.t.splat(quote! { #x })
    }
    fn mul(&mut self, a: T, b: T) -> T {
        self.t.mul(a, b)
    }
    fn add(&mut self, a: T, b: T) -> T {
        self.t.add(a, b)
    }
    fn div(&mut self, a: T, b: T) -> T {
        self.t.div(a, b)
    }
    fn sqrt(&mut self, a: T) -> T {
        self.t.sqrt(a)
    }
}

impl ExpOps for Lanes<'_> {
    fn sub(&mut self, a: T, b: T) -> T {
        self.t.sub(a, b)
    }
    fn min(&mut self, a: T, b: T) -> T {
        self.t.min(a, b)
    }
    fn max(&mut self, a: T, b: T) -> T {
        self.t.max(a, b)
    }
    fn fma(&mut self, a: T, b: T, c: T) -> T {
        self.t.fma(a, b, c)
    }
    fn round(&mut self, a: T) -> T {
        self.t.round(a)
    }
    fn pow2(&mut self, n: T) -> T {
        self.t.exp2_int(n)
    }
    fn scale_pow2(&mut self, p: T, n: T) -> T {
        match self.t {
            // vscalefps: the whole range (0 below about -150, infinity above 128).
            Target::Avx512 => self.t.scalef(p, n),
            _ => {
                let s = self.t.exp2_int(n);
                self.t.mul(p, s)
            }
        }
    }
    fn name(&mut self, v: T, name: &str) -> T {
        let id = ident(name);
        self.body.push(quote! { let #id = #v; });
        quote! { #id }
    }
}

/// The exp helper of a target: `microgpt_model::numerics::exp_rule` rendered on its vectors,
/// fused (fp32 kernels, except AVX-512's table form) or with every operation rounded separately
/// (Q4.12 kernels, which must match the scalar reference bit for bit).
pub fn exp_fn(t: Target, fused: bool, attrs: &T, name: &Ident) -> T {
    if fused && t == Target::Avx512 {
        return exp_table_avx512(attrs, name);
    }
    let v = t.vf();
    let mut body = Body::default();
    let e = exp_rule(&mut Lanes { t, body: &mut body }, quote! { x }, fused);
    let b = body.into_tokens();
    quote! {
        /// `e^x` per lane: Cody-Waite range reduction and a degree-6 polynomial.
        #attrs
        unsafe fn #name(x: #v) -> #v {
            #b
            #e
        }
    }
}
