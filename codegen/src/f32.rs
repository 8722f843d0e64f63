//! The fp32 renderer: the op list as fully unrolled SIMD Rust for one target.
//!
//! Every op becomes one `#[inline]` function with a doc comment naming the op; the step function
//! calls them in order. Two liberties, both within the fp32 tolerance:
//! - RMSNorm scales are deferred: a normalised buffer travels as (unscaled registers, scale), the
//!   matvecs and ReLU that follow work on the registers, and the scale is applied where a value
//!   must be materialised (attention, the residual add, the logits). The reduction thus runs
//!   beside the matvecs instead of before them.
//! - Attention keeps each head's score replicated over the head's lanes, so max, exp and the
//!   weighted sum of values are vertical operations.

use crate::emit::{Body, ident, tree};
use crate::plan::{Arrangement, WeightPlan, heads_aligned};
use crate::target::Target;
use microgpt_model::numerics::{EXP_LN2_HI, EXP_LN2_LO, EXP_LOG2E, EXP_MAX, EXP_MIN, EXP_POLY};
use microgpt_model::{Buffer, HistoryFreePrefix, Op, Param, Program, RMS_EPS, Shape};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use std::collections::HashMap;

type T = TokenStream;

/// A buffer's value at some point of the step: an array local of registers, and the pending
/// RMSNorm factor (`None`: already materialised).
#[derive(Clone)]
struct Val {
    regs: Ident,
    scale: Option<Ident>,
}

/// Generates the fp32 kernel of one target.
pub struct F32Gen<'a> {
    pub t: Target,
    pub shape: Shape,
    pub program: &'a Program,
    /// Start from a prepare-time table of the history-free prefix.
    pub table: bool,
    pub plan: WeightPlan,
    pub prefix: HistoryFreePrefix,
    items: Vec<T>,
}

impl<'a> F32Gen<'a> {
    pub fn new(t: Target, program: &'a Program, table: bool) -> F32Gen<'a> {
        let shape = *program.shape();
        let prefix = program.history_free_prefix();
        let start = if table { prefix.ops } else { 0 };
        let l = t.lanes();
        let plan = WeightPlan::new(
            &shape,
            &program.ops()[start..],
            16,
            |n| n.next_multiple_of(l),
            |rows| Arrangement::Columns {
                rows_pad: rows.next_multiple_of(l),
            },
        );
        F32Gen {
            t,
            shape,
            program,
            table,
            plan,
            prefix,
            items: Vec::new(),
        }
    }

    fn lanes(&self) -> usize {
        self.t.lanes()
    }

    /// Registers holding `n` values.
    pub fn regs(&self, n: usize) -> usize {
        n.div_ceil(self.lanes())
    }

    /// `n` rounded up to whole registers.
    pub fn padded(&self, n: usize) -> usize {
        n.next_multiple_of(self.lanes())
    }

    fn vec_ty(&self, n: usize) -> T {
        let v = self.t.vf();
        let r = self.regs(n);
        quote! { [#v; #r] }
    }

    /// Elements of one row of the prefix table.
    pub fn table_row(&self) -> usize {
        self.prefix
            .live
            .iter()
            .map(|b| self.padded(b.len(&self.shape)))
            .sum()
    }

    /// The op functions, the step body, and the helper items.
    pub fn render(mut self) -> (Vec<T>, T) {
        let mut body = Body::default();
        let mut vals: HashMap<Buffer, Val> = HashMap::new();
        let start = if self.table { self.prefix.ops } else { 0 };
        if self.table {
            self.render_table(&mut body, &mut vals);
        }
        let ops: Vec<Op> = self.program.ops()[start..].to_vec();
        for (i, op) in ops.iter().enumerate() {
            self.render_op(start + i, op, &mut body, &mut vals);
        }
        let logits = vals[&Buffer::Logits].regs.clone();
        let store: Vec<T> = (0..self.regs(self.shape.vocab))
            .map(|i| {
                let off = i * self.lanes();
                self.t
                    .store(quote! { k.logits.as_mut_ptr().add(#off) }, quote! { #logits[#i] })
            })
            .collect();
        body.push(quote! { #(#store)* });
        body.push(quote! { sample(#logits, r, k.inv_temperature) });
        let attrs = self.attrs();
        self.items.push(exp_fn(self.t, true, &attrs));
        self.items.push(sample_fn(self.t, &self.shape, &attrs));
        (self.items, body.into_tokens())
    }

    fn attrs(&self) -> T {
        self.t.fn_attrs(false)
    }

    fn render_table(&mut self, body: &mut Body, vals: &mut HashMap<Buffer, Val>) {
        let mut outs = Vec::new();
        let mut loads = Vec::new();
        let mut tys = Vec::new();
        let mut off = 0;
        let row = self.table_row();
        for &b in &self.prefix.live {
            let n = b.len(&self.shape);
            let regs: Vec<T> = (0..self.regs(n))
                .map(|i| {
                    let o = off + i * self.lanes();
                    self.t.load(quote! { base.add(#o) })
                })
                .collect();
            loads.push(quote! { [#(#regs),*] });
            tys.push(self.vec_ty(n));
            off += self.padded(n);
            let id = body.fresh(b.name());
            outs.push(id.clone());
            vals.insert(
                b,
                Val {
                    regs: id,
                    scale: None,
                },
            );
        }
        let names: Vec<String> = self.prefix.live.iter().map(|b| b.name().to_string()).collect();
        let doc = format!(
            "Ops 0..{} of shape {} (everything before the first attention depends only on the token \
             and the position): one row of the prefix table, computed at prepare time by the \
             reference engine. Returns {}.",
            self.prefix.ops,
            self.shape,
            names.join(", ")
        );
        let attrs = self.attrs();
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn op_prefix_table(table: *const f32, tok: usize, pos: usize) -> (#(#tys),*) {
                let base = table.add((tok * BLOCK + pos) * #row);
                (#(#loads),*)
            }
        });
        body.push(quote! { let (#(#outs),*) = op_prefix_table(k.table.as_ptr(), tok, pos); });
    }

    fn render_op(&mut self, index: usize, op: &Op, body: &mut Body, vals: &mut HashMap<Buffer, Val>) {
        let s = self.shape;
        let doc_head = format!("Op {index} of the forward pass, shape {s}: `{op}`.");
        let attrs = self.attrs();
        match *op {
            Op::Embed { out } => {
                let wte = self.plan.get(Param::Wte).offset;
                let wpe = self.plan.get(Param::Wpe).offset;
                let row = self.padded(s.embd);
                let regs: Vec<T> = (0..self.regs(s.embd))
                    .map(|i| {
                        let o = i * self.lanes();
                        let a = self.t.load(quote! { w.add(#wte + tok * #row + #o) });
                        let b = self.t.load(quote! { w.add(#wpe + pos * #row + #o) });
                        self.t.add(a, b)
                    })
                    .collect();
                let ty = self.vec_ty(s.embd);
                let name = format_ident!("op{:02}_embed", index);
                let doc = format!("{doc_head} Loads one row of each embedding table and adds them.");
                self.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(w: *const f32, tok: usize, pos: usize) -> #ty {
                        [#(#regs),*]
                    }
                });
                let id = body.bind(out.name(), quote! { #name(w, tok, pos) });
                vals.insert(
                    out,
                    Val {
                        regs: id,
                        scale: None,
                    },
                );
            }
            Op::RmsNorm { input, out } => {
                let x = vals[&input].clone();
                let n = s.embd;
                let ty = self.vec_ty(n);
                let r = self.regs(n);
                let squares = tree(
                    (0..r)
                        .map(|i| self.t.mul(quote! { x[#i] }, quote! { x[#i] }))
                        .collect(),
                    |a, b| self.t.add(a, b),
                );
                let hsum = self.t.hsum(quote! { sq });
                let inv_n = 1.0f32 / n as f32;
                let eps = RMS_EPS as f32;
                let name = format_ident!("op{:02}_rmsnorm_scale", index);
                let doc = format!(
                    "{doc_head} Returns the factor that normalises `c · x` (`c`: the factor \
                     `x` already carries); it is applied where the value is materialised."
                );
                self.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(x: #ty, c: f32) -> f32 {
                        let sq = #squares;
                        let ms = #hsum * (c * c) * #inv_n;
                        c / (ms + #eps).sqrt()
                    }
                });
                let regs = x.regs.clone();
                let c = x.scale.map_or_else(|| quote! { 1.0f32 }, |c| quote! { #c });
                let scale = body.bind("scale", quote! { #name(#regs, #c) });
                vals.insert(
                    out,
                    Val {
                        regs: x.regs,
                        scale: Some(scale),
                    },
                );
            }
            Op::MatVec { weight, input, out } => {
                let x = vals[&input].clone();
                let (rows, cols) = weight.dims(&s);
                let name = format_ident!("op{:02}_matvec_{}", index, weight.name().replace('.', "_"));
                let doc = format!(
                    "{doc_head} A {rows}×{cols} matrix times a vector: each input broadcast in turn \
                     and multiplied by a whole prepared column, several accumulators per output register."
                );
                self.matvec_fn(&name, &doc, weight, rows, cols);
                let regs = x.regs.clone();
                let id = body.bind(out.name(), quote! { #name(w, #regs) });
                vals.insert(
                    out,
                    Val {
                        regs: id,
                        scale: x.scale,
                    },
                );
            }
            Op::Logits { input } => {
                let x = vals[&input].clone();
                let name = format_ident!("op{:02}_logits", index);
                let doc = format!("{doc_head} The output head, a matvec like the others.");
                self.matvec_fn(&name, &doc, Param::LmHead, s.vocab, s.embd);
                let regs = x.regs.clone();
                let mut id = body.bind("logits", quote! { #name(w, #regs) });
                if let Some(c) = x.scale {
                    let n = self.regs(s.vocab);
                    let scaled: Vec<T> = (0..n)
                        .map(|i| self.t.mul(quote! { #id[#i] }, self.t.splat(quote! { #c })))
                        .collect();
                    id = body.bind("logits", quote! { [#(#scaled),*] });
                }
                vals.insert(
                    Buffer::Logits,
                    Val {
                        regs: id,
                        scale: None,
                    },
                );
            }
            Op::Relu { buf } => {
                let x = vals[&buf].clone();
                let n = buf.len(&s);
                let ty = self.vec_ty(n);
                let regs: Vec<T> = (0..self.regs(n))
                    .map(|i| self.t.max(quote! { h[#i] }, self.t.zero()))
                    .collect();
                let name = format_ident!("op{:02}_relu", index);
                let doc = format!(
                    "{doc_head} A pending RMSNorm factor is positive, so it commutes with ReLU and \
                     stays pending."
                );
                self.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(h: #ty) -> #ty {
                        [#(#regs),*]
                    }
                });
                let r = x.regs.clone();
                let id = body.bind(buf.name(), quote! { #name(#r) });
                vals.insert(
                    buf,
                    Val {
                        regs: id,
                        scale: x.scale,
                    },
                );
            }
            Op::Add { input, into } => {
                let a = vals[&input].clone();
                let b = vals[&into].clone();
                let n = into.len(&s);
                let ty = self.vec_ty(n);
                let regs: Vec<T> = (0..self.regs(n))
                    .map(|i| {
                        let base = match b.scale {
                            Some(_) => self.t.mul(quote! { into[#i] }, self.t.splat(quote! { sb })),
                            None => quote! { into[#i] },
                        };
                        match a.scale {
                            Some(_) => self
                                .t
                                .fma(quote! { input[#i] }, self.t.splat(quote! { sa }), base),
                            None => self.t.add(quote! { input[#i] }, base),
                        }
                    })
                    .collect();
                let name = format_ident!("op{:02}_residual_add", index);
                let doc = format!("{doc_head} Applies the pending factors of both operands.");
                self.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(into: #ty, input: #ty, sb: f32, sa: f32) -> #ty {
                        [#(#regs),*]
                    }
                });
                let (ra, rb) = (a.regs.clone(), b.regs.clone());
                let sa = a.scale.map_or_else(|| quote! { 1.0f32 }, |c| quote! { #c });
                let sb = b.scale.map_or_else(|| quote! { 1.0f32 }, |c| quote! { #c });
                let id = body.bind(into.name(), quote! { #name(#rb, #ra, #sb, #sa) });
                vals.insert(
                    into,
                    Val {
                        regs: id,
                        scale: None,
                    },
                );
            }
            Op::Attention { layer, q, k, v, out } => {
                let name = format_ident!("op{:02}_attention", index);
                self.attention_fn(&name, &doc_head, layer);
                let arg = |b: Buffer| {
                    let val = vals[&b].clone();
                    let regs = val.regs;
                    let c = val.scale.map_or_else(|| quote! { 1.0f32 }, |c| quote! { #c });
                    (quote! { #regs }, c)
                };
                let (qr, qs) = arg(q);
                let (kr, ks) = arg(k);
                let (vr, vs) = arg(v);
                let id = body.bind(
                    out.name(),
                    quote! { #name(keys, values, pos, #qr, #qs, #kr, #ks, #vr, #vs) },
                );
                vals.insert(
                    out,
                    Val {
                        regs: id,
                        scale: None,
                    },
                );
            }
        }
    }

    fn matvec_fn(&mut self, name: &Ident, doc: &str, weight: Param, rows: usize, cols: usize) {
        let t = self.t;
        let l = self.lanes();
        let placed = self.plan.get(weight).clone();
        let Arrangement::Columns { rows_pad } = placed.arrangement else {
            unreachable!("fp32 matrices are placed as columns")
        };
        let in_ty = self.vec_ty(cols);
        let out_ty = self.vec_ty(rows);
        let out_regs = rows_pad / l;
        let chains = 8usize.div_ceil(out_regs).clamp(1, cols);
        let mut body = Body::default();
        // How each input element reaches every lane.
        let bcast = |c: usize| -> T {
            match t {
                Target::Scalar => quote! { x[#c] },
                Target::Neon => {
                    let (reg, lane) = (c / 4, (c % 4) as i32);
                    quote! { x[#reg], #lane }
                }
                Target::Avx2 | Target::Avx512 => t.splat(quote! { xs[#c] }),
            }
        };
        if matches!(t, Target::Avx2 | Target::Avx512) {
            let n = self.padded(cols);
            let stores: Vec<T> = (0..self.regs(cols))
                .map(|i| {
                    let o = i * l;
                    t.store(quote! { xs.as_mut_ptr().add(#o) }, quote! { x[#i] })
                })
                .collect();
            body.push(quote! { let mut xs = [0.0f32; #n]; #(#stores)* });
        }
        let mut outs = Vec::new();
        for o in 0..out_regs {
            // Accumulators are reassigned, not rebound: a long chain of `let`s nests scopes,
            // which costs the compiler more than the code is worth.
            let accs: Vec<Ident> = (0..chains).map(|_| body.fresh("acc")).collect();
            for c in 0..cols {
                let off = placed.offset + c * rows_pad + o * l;
                let wv = t.load(quote! { w.add(#off) });
                let slot = c % chains;
                let acc = &accs[slot];
                let first = c < chains;
                let expr = match (t, first) {
                    (Target::Neon, true) => {
                        let b = bcast(c);
                        quote! { vmulq_laneq_f32(#wv, #b) }
                    }
                    (Target::Neon, false) => {
                        let b = bcast(c);
                        quote! { vfmaq_laneq_f32(#acc, #wv, #b) }
                    }
                    (_, true) => t.mul(bcast(c), wv),
                    (_, false) => t.fma(bcast(c), wv, quote! { #acc }),
                };
                body.push(if first {
                    quote! { let mut #acc = #expr; }
                } else {
                    quote! { #acc = #expr; }
                });
            }
            let terms: Vec<T> = accs.iter().map(|a| quote! { #a }).collect();
            outs.push(tree(terms, |a, b| t.add(a, b)));
        }
        let attrs = self.attrs();
        let b = body.into_tokens();
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const f32, x: #in_ty) -> #out_ty {
                #b
                [#(#outs),*]
            }
        });
    }

    fn attention_fn(&mut self, name: &Ident, doc_head: &str, layer: usize) {
        let t = self.t;
        let s = self.shape;
        let l = self.lanes();
        let (e, hd) = (s.embd, s.head_dim());
        let r = self.regs(e);
        let epad = self.padded(e);
        let ty = self.vec_ty(e);
        let cache = layer * s.block * epad;
        let inv_sqrt = 1.0f32 / (hd as f32).sqrt();

        // Materialise q, k, v (their pending factors) and store k, v at this position.
        let mut pre = Body::default();
        for (buf, c) in [("q", "cq"), ("k", "ck"), ("v", "cv")] {
            let b = ident(buf);
            let c = ident(c);
            let regs: Vec<T> = (0..r)
                .map(|i| t.mul(quote! { #b[#i] }, t.splat(quote! { #c })))
                .collect();
            pre.push(quote! { let #b: #ty = [#(#regs),*]; });
        }
        let qs: Vec<T> = (0..r)
            .map(|i| t.mul(quote! { q[#i] }, t.splat(quote! { #inv_sqrt })))
            .collect();
        pre.push(quote! { let q: #ty = [#(#qs),*]; });
        for i in 0..r {
            let o = i * l;
            pre.push(t.store(quote! { keys.add(#cache + pos * #epad + #o) }, quote! { k[#i] }));
            pre.push(t.store(quote! { values.add(#cache + pos * #epad + #o) }, quote! { v[#i] }));
        }

        // Scores of one cached position: q·K[t] per head, replicated over the head's lanes.
        let mut score = Body::default();
        let prods: Vec<Ident> = (0..r)
            .map(|i| {
                let o = i * l;
                let kv = t.load(quote! { kt.add(#o) });
                score.bind("p", t.mul(quote! { q[#i] }, kv))
            })
            .collect();
        let score_regs: Vec<T> = if heads_aligned(&s, l) {
            let regs_per_head = (hd / l).max(1);
            let mut out = Vec::new();
            for group in prods.chunks(regs_per_head) {
                let mut acc: T = tree(group.iter().map(|p| quote! { #p }).collect(), |a, b| t.add(a, b));
                let width = hd.min(l);
                let mut d = 1;
                while d < width {
                    let a = score.bind("h", acc);
                    acc = t.add(quote! { #a }, t.swap(quote! { #a }, d));
                    d *= 2;
                }
                let sc = score.bind("sc", acc);
                for _ in 0..regs_per_head {
                    out.push(quote! { #sc });
                }
            }
            out
        } else {
            // Heads straddle registers: reduce through memory, one head at a time.
            let stores: Vec<T> = prods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let o = i * l;
                    t.store(quote! { pr.as_mut_ptr().add(#o) }, quote! { #p })
                })
                .collect();
            score.push(quote! { let mut pr = [0.0f32; #epad]; #(#stores)* let mut sl = [0.0f32; #epad]; });
            for h in 0..s.heads {
                let terms: Vec<T> = (h * hd..h * hd + hd).map(|c| quote! { pr[#c] }).collect();
                let sum = tree(terms, |a, b| quote! { (#a + #b) });
                let lanes: Vec<usize> = (h * hd..h * hd + hd).collect();
                score.push(quote! { let hs = #sum; #( sl[#lanes] = hs; )* });
            }
            (0..r)
                .map(|i| {
                    let o = i * l;
                    t.load(quote! { sl.as_ptr().add(#o) })
                })
                .collect()
        };
        let score_body = score.into_tokens();
        let neg_inf = t.splat(quote! { f32::NEG_INFINITY });
        let maxes: Vec<T> = (0..r)
            .map(|i| t.max(quote! { m[#i] }, quote! { sc[#i] }))
            .collect();
        let exps: Vec<T> = (0..r)
            .map(|i| {
                let d = t.sub(quote! { s[#i] }, quote! { m[#i] });
                quote! { exp_v(#d) }
            })
            .collect();
        let sums: Vec<T> = (0..r)
            .map(|i| t.add(quote! { sum[#i] }, quote! { e[#i] }))
            .collect();
        let fmas: Vec<T> = (0..r)
            .map(|i| {
                let o = i * l;
                t.fma(
                    quote! { e[#i] },
                    t.load(quote! { vt.add(#o) }),
                    quote! { acc[#i] },
                )
            })
            .collect();
        let outs: Vec<T> = (0..r)
            .map(|i| t.div(quote! { acc[#i] }, quote! { sum[#i] }))
            .collect();
        let zero = t.zero();
        let block = s.block;
        let doc = format!(
            "{doc_head} Stores this position's key and value, then for each head (channels \
             h·{hd}..h·{hd}+{hd}) takes a max-subtracted softmax of q·K[t]/√{hd} over the cached \
             positions and the weighted sum of V[t]. Every head's score fills its own lanes, so the \
             softmax is vertical across positions."
        );
        let attrs = self.attrs();
        let pre = pre.into_tokens();
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            #[allow(clippy::too_many_arguments)]
            unsafe fn #name(
                keys: *mut f32, values: *mut f32, pos: usize,
                q: #ty, cq: f32, k: #ty, ck: f32, v: #ty, cv: f32,
            ) -> #ty {
                #pre
                let mut scores: [::core::mem::MaybeUninit<#ty>; #block] =
                    [const { ::core::mem::MaybeUninit::uninit() }; #block];
                let mut m: #ty = [#neg_inf; #r];
                for t in 0..=pos {
                    let kt = keys.add(#cache + t * #epad);
                    #score_body
                    let sc: #ty = [#(#score_regs),*];
                    m = [#(#maxes),*];
                    scores[t].write(sc);
                }
                let mut sum: #ty = [#zero; #r];
                let mut acc: #ty = [#zero; #r];
                for t in 0..=pos {
                    // SAFETY: the first loop wrote every position up to `pos`.
                    let s = scores[t].assume_init();
                    let e: #ty = [#(#exps),*];
                    let vt = values.add(#cache + t * #epad);
                    sum = [#(#sums),*];
                    acc = [#(#fmas),*];
                }
                [#(#outs),*]
            }
        });
    }
}

/// The sampler of a target (shared by the fp32 and Q4.12 kernels): `softmax(logits / T)` with an
/// unnormalised CDF compared against `r · Σe`.
pub fn sample_fn(t: Target, s: &Shape, attrs: &T) -> T {
    let l = t.lanes();
    let vocab = s.vocab;
    let r = vocab.div_ceil(l);
    let v = t.vf();
    let ty = quote! { [#v; #r] };
    let mut body = Body::default();
    let zs: Vec<Ident> = (0..r)
        .map(|i| body.bind("z", t.mul(quote! { logits[#i] }, t.splat(quote! { inv_t }))))
        .collect();
    let valid = |i: usize| vocab.saturating_sub(i * l).min(l);
    let masked: Vec<T> = zs
        .iter()
        .enumerate()
        .map(|(i, z)| t.keep_lanes(quote! { #z }, valid(i), quote! { f32::NEG_INFINITY }))
        .collect();
    let mx = tree(masked, |a, b| t.max(a, b));
    let m = t.splat(t.hmax(quote! { mx }));
    body.push(quote! { let mx = #mx; let m = #m; });
    let mut carry: Option<Ident> = None;
    let mut counts = Vec::new();
    let mut cums = Vec::new();
    for (i, z) in zs.iter().enumerate() {
        let d = t.sub(quote! { #z }, quote! { m });
        let e = quote! { exp_v(#d) };
        let e = body.bind("e", t.keep_lanes(e, valid(i), quote! { 0.0f32 }));
        let mut c = t.scan(quote! { #e });
        if let Some(prev) = &carry {
            c = t.add(c, t.splat_last(quote! { #prev }));
        }
        let c = body.bind("c", c);
        cums.push(c.clone());
        carry = Some(c);
    }
    let last = carry.expect("one register at least");
    let thr = t.mul(t.splat(quote! { r }), t.splat_last(quote! { #last }));
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

/// The exp helper of a target: Cody-Waite reduction and the degree-6 polynomial of
/// `microgpt_model::numerics`, fused (fp32 kernels) or with every operation rounded separately
/// (Q4.12 kernels, which must match the scalar reference bit for bit).
pub fn exp_fn(t: Target, fused: bool, attrs: &T) -> T {
    let v = t.vf();
    let c = |x: f32| t.splat(quote! { #x });
    let [c0, c1, c2, c3, c4, c5] = EXP_POLY;
    let (lo, hi) = (c(EXP_MIN), c(EXP_MAX));
    let clamp = t.max(t.min(quote! { x }, hi), lo);
    let n = t.round(t.mul(quote! { x }, c(EXP_LOG2E)));
    let rr = if fused {
        let neg_hi = -EXP_LN2_HI;
        let neg_lo = -EXP_LN2_LO;
        t.fma(
            quote! { n },
            c(neg_lo),
            t.fma(quote! { n }, c(neg_hi), quote! { x }),
        )
    } else {
        t.sub(
            t.sub(quote! { x }, t.mul(quote! { n }, c(EXP_LN2_HI))),
            t.mul(quote! { n }, c(EXP_LN2_LO)),
        )
    };
    let step = |acc: T, coef: f32| t.mul_add(acc, quote! { r }, c(coef), fused);
    let p = step(step(step(step(step(c(c5), c4), c3), c2), c1), c0);
    let y = t.add(
        t.mul_add(
            quote! { p },
            t.mul(quote! { r }, quote! { r }),
            quote! { r },
            fused,
        ),
        c(1.0),
    );
    let scaled = t.mul(quote! { y }, t.exp2_int(quote! { n }));
    quote! {
        /// `e^x` per lane: Cody-Waite range reduction and a degree-6 polynomial.
        #attrs
        unsafe fn exp_v(x: #v) -> #v {
            let x = #clamp;
            let n = #n;
            let r = #rr;
            let p = #p;
            let y = #y;
            #scaled
        }
    }
}
