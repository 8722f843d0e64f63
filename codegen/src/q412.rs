//! The Q4.12 renderer: the op list in the fixed-point arithmetic of the scalar Q4.12 reference,
//! fully unrolled for one target.
//!
//! Values travel as i32 lanes holding i16-range integers. The integer parts (embedding, matvecs,
//! residual adds, ReLU, attention dots) are exact in any order; the float parts (RMSNorm and the
//! attention softmax) perform the reference's IEEE operations in the reference's order, separately
//! rounded, with the datapath's own `exp`, so every integer matches the reference bit for bit.
//! Only the sampler, which the tolerance rules cover, is free.

use crate::attn::{self, LaneOps};
use crate::emit::{Body, Expr, Vector, ident, tree};
use crate::frame::{AttentionDims, Frame};
use crate::sample::{exp_fn, sample_fn};
use crate::target::Target;
use microgpt_model::numerics::{q412_real, q412_rms_scale, q412_rms_value, q412_score, q412_units};
use microgpt_model::plan::Arrangement;
use microgpt_model::{Buffer, Op, Param, Program};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use std::collections::HashMap;

type T = TokenStream;

/// Generates the Q4.12 kernel of one target.
pub struct Q412Gen<'a> {
    pub f: Frame<'a>,
    /// AVX-512 with VNNI's `vpdpwssd` for the matvecs.
    pub vnni: bool,
}

impl<'a> Q412Gen<'a> {
    pub fn new(t: Target, program: &'a Program, table: bool, vnni: bool) -> Q412Gen<'a> {
        let l = t.lanes();
        let pairs = matches!(t, Target::Sse | Target::Avx2 | Target::Avx512);
        let f = Frame::new(t, program, table, 32, |rows, _| {
            let rows_pad = rows.next_multiple_of(l);
            if pairs {
                Arrangement::ColumnPairs { rows_pad }
            } else {
                Arrangement::Columns { rows_pad }
            }
        });
        Q412Gen { f, vnni }
    }

    fn ity(&self, n: usize) -> T {
        let v = self.f.t.vi();
        let r = self.f.regs(n);
        quote! { [#v; #r] }
    }

    fn fty(&self, n: usize) -> T {
        let v = self.f.t.vf();
        let r = self.f.regs(n);
        quote! { [#v; #r] }
    }

    fn attrs(&self) -> T {
        self.f.t.fn_attrs(self.vnni)
    }

    /// The op functions and helpers, and the step body.
    pub fn render(mut self) -> (Vec<T>, T) {
        let mut body = Body::default();
        let mut vals: HashMap<Buffer, Ident> = HashMap::new();
        if self.f.table {
            self.render_table(&mut body, &mut vals);
        }
        let (start, ops) = self.f.ops();
        for (i, op) in ops.iter().enumerate() {
            self.render_op(start + i, op, &mut body, &mut vals);
        }
        let logits = vals[&Buffer::Logits].clone();
        let t = self.f.t;
        let l = self.f.lanes();
        let vocab = self.f.shape.vocab;
        let fl: Vec<T> = (0..self.f.regs(vocab))
            .map(|i| q412_real(&mut Vector(t), t.i32_to_f32(quote! { #logits[#i] })))
            .collect();
        let lf = body.bind("logits_f", quote! { [#(#fl),*] });
        let stores: Vec<T> = (0..self.f.regs(vocab))
            .map(|i| {
                let o = i * l;
                t.store(quote! { k.logits.as_mut_ptr().add(#o) }, quote! { #lf[#i] })
            })
            .collect();
        body.push(quote! { #(#stores)* });
        body.push(quote! { sample(#lf, r, k.inv_temperature) });
        let attrs = self.attrs();
        // The attention's exp is the datapath's; the sampler, free of that constraint, takes the
        // fp32 kernels' faster one.
        self.f.items.push(exp_fn(t, false, &attrs, &ident("exp_v")));
        let fast = ident("exp_fast");
        self.f.items.push(exp_fn(t, true, &attrs, &fast));
        self.f
            .items
            .push(sample_fn(t, &self.f.shape, &attrs, false, &fast));
        (self.f.items, body.into_tokens())
    }

    fn render_table(&mut self, body: &mut Body, vals: &mut HashMap<Buffer, Ident>) {
        let (t, attrs) = (self.f.t, self.attrs());
        let bound = self.f.prefix_table(
            body,
            &attrs,
            quote! { i16 },
            |p| t.load_i16(p),
            t.vi(),
            "the scalar Q4.12 reference, so exact",
        );
        vals.extend(bound);
    }

    /// One op: its function among the items, its call in the step body.
    fn render_op(&mut self, index: usize, op: &Op, body: &mut Body, vals: &mut HashMap<Buffer, Ident>) {
        let s = self.f.shape;
        let head = format!("Op {index} of the forward pass in Q4.12, shape {s}: `{op}`.");
        let name = |suffix: &str| format_ident!("op{:02}_{}", index, suffix);
        let (made, call) = match *op {
            Op::Embed { out } => (out, self.embed(name("embed"), &head)),
            Op::RmsNorm { input, out } => (out, self.rmsnorm(name("rmsnorm"), &head, &vals[&input])),
            Op::MatVec { weight, input, out } => {
                let name = name(&format!("matvec_{}", weight.name().replace('.', "_")));
                (out, self.matvec(name, &head, weight, &vals[&input]))
            }
            Op::Logits { input } => (Buffer::Logits, self.logits(name("logits"), &head, &vals[&input])),
            Op::Relu { buf } => (buf, self.relu(name("relu"), &head, buf, &vals[&buf])),
            Op::Add { input, into } => (
                into,
                self.add(name("residual_add"), &head, into, &vals[&input], &vals[&into]),
            ),
            Op::Attention { layer, q, k, v, out } => {
                let qkv = [q, k, v].map(|b| &vals[&b]);
                (out, self.attention(name("attention"), &head, layer, qkv))
            }
        };
        vals.insert(made, body.bind(made.name(), call));
    }

    /// `out = W · x`; returns the call.
    fn matvec(&mut self, name: Ident, head: &str, weight: Param, x: &Ident) -> T {
        let (rows, cols) = weight.dims(&self.f.shape);
        let doc = format!(
            "{head} A {rows}×{cols} Q4.12 matvec: i32 sums of i16 products (exact in any order), \
             then `>> 12` and saturation to i16."
        );
        self.matvec_fn(&name, &doc, weight, rows, cols);
        quote! { #name(w, #x) }
    }

    /// `logits = lm_head · x`; returns the call.
    fn logits(&mut self, name: Ident, head: &str, x: &Ident) -> T {
        let s = self.f.shape;
        let doc = format!("{head} The output head: a Q4.12 matvec.");
        self.matvec_fn(&name, &doc, Param::LmHead, s.vocab, s.embd);
        quote! { #name(w, #x) }
    }

    /// Attention over the cache of `layer`; returns the call.
    fn attention(&mut self, name: Ident, head: &str, layer: usize, [q, k, v]: [&Ident; 3]) -> T {
        self.attention_fn(&name, head, layer);
        quote! { #name(keys, values, pos, #q, #k, #v) }
    }

    /// `x = wte[tok] + wpe[pos]`, i16 wrapping; returns the call.
    fn embed(&mut self, name: Ident, head: &str) -> T {
        let (t, s, l) = (self.f.t, self.f.shape, self.f.lanes());
        let wte = self.f.plan.get(Param::Wte).offset;
        let wpe = self.f.plan.get(Param::Wpe).offset;
        let row = self.f.padded(s.embd);
        let regs: Vec<T> = (0..self.f.regs(s.embd))
            .map(|i| {
                let o = i * l;
                let a = t.load_i16(quote! { w.add(#wte + tok * #row + #o) });
                let b = t.load_i16(quote! { w.add(#wpe + pos * #row + #o) });
                t.wrap16(t.add_i32(a, b))
            })
            .collect();
        let (attrs, ty) = (self.attrs(), self.ity(s.embd));
        let doc = format!("{head} i16 addition, wrapping.");
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const i16, tok: usize, pos: usize) -> #ty {
                [#(#regs),*]
            }
        });
        quote! { #name(w, tok, pos) }
    }

    /// RMSNorm in f32 in the reference's order, the values rounded back; returns the call.
    fn rmsnorm(&mut self, name: Ident, head: &str, x: &Ident) -> T {
        let (t, l) = (self.f.t, self.f.lanes());
        let n = self.f.shape.embd;
        let r = self.f.regs(n);
        let ty = self.ity(n);
        let fty = self.fty(n);
        let epad = self.f.padded(n);
        let fx: Vec<T> = (0..r)
            .map(|i| q412_real(&mut Vector(t), t.i32_to_f32(quote! { x[#i] })))
            .collect();
        let sq_stores: Vec<T> = (0..r)
            .map(|i| {
                let o = i * l;
                t.store(
                    quote! { sq.as_mut_ptr().add(#o) },
                    t.mul(quote! { fx[#i] }, quote! { fx[#i] }),
                )
            })
            .collect();
        let adds: Vec<T> = (0..n).map(|i| quote! { ms += sq[#i]; }).collect();
        let outs: Vec<T> = (0..r)
            .map(|i| {
                let y = q412_rms_value(&mut Vector(t), quote! { fx[#i] }, t.splat(quote! { scale }));
                t.sat16(t.f32_to_i32_round(y))
            })
            .collect();
        let scale = q412_rms_scale(&mut Expr, quote! { ms }, n);
        let doc = format!(
            "{head} In f32 as the reference does it: the sum of squares left to right, \
             `1/sqrt(ms/{n} + 1e-5)`, each value rounded half to even and saturated."
        );
        let attrs = self.attrs();
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(x: #ty) -> #ty {
                let fx: #fty = [#(#fx),*];
                let mut sq = [0.0f32; #epad];
                #(#sq_stores)*
                let mut ms = 0.0f32;
                #(#adds)*
                let scale = #scale;
                [#(#outs),*]
            }
        });
        quote! { #name(#x) }
    }

    /// `buf = relu(buf)`; returns the call.
    fn relu(&mut self, name: Ident, head: &str, buf: Buffer, x: &Ident) -> T {
        let t = self.f.t;
        let n = buf.len(&self.f.shape);
        let ty = self.ity(n);
        let regs: Vec<T> = (0..self.f.regs(n))
            .map(|i| t.max0_i32(quote! { h[#i] }))
            .collect();
        let attrs = self.attrs();
        self.f.items.push(quote! {
            #[doc = #head]
            #attrs
            unsafe fn #name(h: #ty) -> #ty {
                [#(#regs),*]
            }
        });
        quote! { #name(#x) }
    }

    /// `into += input`, saturated; returns the call.
    fn add(&mut self, name: Ident, head: &str, into: Buffer, input: &Ident, to: &Ident) -> T {
        let t = self.f.t;
        let n = into.len(&self.f.shape);
        let ty = self.ity(n);
        let regs: Vec<T> = (0..self.f.regs(n))
            .map(|i| t.sat16(t.add_i32(quote! { into[#i] }, quote! { input[#i] })))
            .collect();
        let doc = format!("{head} i32 sum, saturated to i16.");
        let attrs = self.attrs();
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(into: #ty, input: #ty) -> #ty {
                [#(#regs),*]
            }
        });
        quote! { #name(#to, #input) }
    }

    fn matvec_fn(&mut self, name: &Ident, doc: &str, weight: Param, rows: usize, cols: usize) {
        let t = self.f.t;
        let placed = self.f.plan.get(weight).clone();
        let in_ty = self.ity(cols);
        let out_ty = self.ity(rows);
        let out_regs = rows.div_ceil(self.f.lanes());
        let mut body = Body::default();
        let at = placed.offset;
        let outs = match (t, placed.arrangement) {
            (Target::Sse | Target::Avx2 | Target::Avx512, Arrangement::ColumnPairs { rows_pad }) => {
                self.pair_columns(&mut body, at, rows_pad, cols, out_regs)
            }
            (Target::Neon, Arrangement::Columns { rows_pad }) => {
                self.lane_columns(&mut body, at, rows_pad, cols, out_regs)
            }
            (Target::Scalar, Arrangement::Columns { rows_pad }) => {
                self.scalar_columns(&mut body, at, rows_pad, rows, cols)
            }
            _ => unreachable!("arrangement for {t:?}"),
        };
        let attrs = self.attrs();
        let b = body.into_tokens();
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const i16, x: #in_ty) -> #out_ty {
                #b
                [#(#outs),*]
            }
        });
    }

    /// The sum of a matvec output's accumulator chains, `>> 12` and saturated to i16.
    fn shifted_sum(&self, accs: &[Ident]) -> T {
        let t = self.f.t;
        let terms: Vec<T> = accs.iter().map(|a| quote! { #a }).collect();
        t.sat16(t.shr12(tree(terms, |a, b| t.add_i32(a, b))))
    }

    /// x86: the input as i16 pairs, each pair broadcast as one i32 and multiplied by a register of
    /// interleaved column pairs (`pair_dot`), several accumulators per output register.
    fn pair_columns(
        &self,
        body: &mut Body,
        at: usize,
        rows_pad: usize,
        cols: usize,
        out_regs: usize,
    ) -> Vec<T> {
        let (t, l) = (self.f.t, self.f.lanes());
        let mut outs = Vec::new();
        // The input as i16 pairs in memory: each pair is broadcast as one i32.
        let n = self.f.padded(cols).max(2);
        let stores: Vec<T> = (0..self.f.regs(cols))
            .map(|i| {
                let o = i * l;
                t.store_as_i16(quote! { xs.as_mut_ptr().add(#o) }, quote! { x[#i] })
            })
            .collect();
        body.push(quote! {
            let mut xs = [0i16; #n];
            #(#stores)*
            let xp = xs.as_ptr() as *const i32;
        });
        let pairs = cols.div_ceil(2);
        let chains = 8usize.div_ceil(out_regs).clamp(1, pairs);
        for o in 0..out_regs {
            let accs: Vec<Ident> = (0..chains).map(|_| body.fresh("acc")).collect();
            for p in 0..pairs {
                let off = at + (p * rows_pad + o * l) * 2;
                let acc = &accs[p % chains];
                let pair = quote! { xp.add(#p).read_unaligned() };
                let wv = t.load_i32(quote! { w.add(#off) });
                let first = p < chains;
                let prev = if first {
                    t.zero_bits()
                } else {
                    quote! { #acc }
                };
                body.accumulate(acc, first, t.pair_dot(prev, wv, pair, self.vnni));
            }
            outs.push(self.shifted_sum(&accs));
        }
        outs
    }

    /// NEON: the input narrowed to i16, each column times one input lane, widened into i32
    /// accumulators.
    fn lane_columns(
        &self,
        body: &mut Body,
        at: usize,
        rows_pad: usize,
        cols: usize,
        out_regs: usize,
    ) -> Vec<T> {
        let (t, l) = (self.f.t, self.f.lanes());
        let mut outs = Vec::new();
        let halves: Vec<T> = (0..self.f.regs(cols))
            .map(|i| t.narrow_i16(quote! { x[#i] }))
            .collect();
        body.push(quote! { let xh = [#(#halves),*]; });
        let chains = 8usize.div_ceil(out_regs).clamp(1, cols);
        for o in 0..out_regs {
            let accs: Vec<Ident> = (0..chains).map(|_| body.fresh("acc")).collect();
            for c in 0..cols {
                let off = at + c * rows_pad + o * l;
                let (reg, lane) = (c / 4, (c % 4) as i32);
                let acc = &accs[c % chains];
                let (p, x) = (quote! { w.add(#off) }, quote! { xh[#reg], #lane });
                let first = c < chains;
                let prev = (!first).then(|| quote! { #acc });
                body.accumulate(acc, first, t.widen_mac_by_lane(prev, p, x));
            }
            outs.push(self.shifted_sum(&accs));
        }
        outs
    }

    /// Scalar: each output a wrapping i32 sum over the columns.
    fn scalar_columns(
        &self,
        body: &mut Body,
        at: usize,
        rows_pad: usize,
        rows: usize,
        cols: usize,
    ) -> Vec<T> {
        let t = self.f.t;
        let mut outs = Vec::new();
        for o in 0..rows {
            let acc = body.fresh("acc");
            for c in 0..cols {
                let off = at + c * rows_pad + o;
                let prod = quote! { (*w.add(#off) as i32).wrapping_mul(x[#c]) };
                body.push(if c == 0 {
                    quote! { let mut #acc = #prod; }
                } else {
                    quote! { #acc = #acc.wrapping_add(#prod); }
                });
            }
            outs.push(t.sat16(t.shr12(quote! { #acc })));
        }
        outs
    }

    fn attention_fn(&mut self, name: &Ident, doc_head: &str, layer: usize) {
        let t = self.f.t;
        let s = self.f.shape;
        let AttentionDims { l, e, r, epad, .. } = self.f.attention_dims();
        let ty = self.ity(e);
        let cache = layer * s.block * epad;
        let attrs = self.attrs();
        let mut pre = Body::default();
        for i in 0..r {
            let o = i * l;
            pre.push(t.store_i32(quote! { keys.add(#cache + pos * #epad + #o) }, quote! { k[#i] }));
            let vf = q412_real(&mut Vector(t), t.i32_to_f32(quote! { v[#i] }));
            pre.push(t.store(quote! { values.add(#cache + pos * #epad + #o) }, vf));
        }
        let dispatch = attn::dispatch(
            name,
            s.block,
            quote! { keys.add(#cache) as *const i32, values.add(#cache) as *const f32, q },
            quote! { v },
        );
        let pre = pre.into_tokens();
        let doc = format!(
            "{doc_head} Stores this position's key (i32) and value (as f32, /4096), then dispatches \
             on the position to attention unrolled for that many cached rows."
        );
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(keys: *mut i32, values: *mut f32, pos: usize, q: #ty, k: #ty, v: #ty) -> #ty {
                #pre
                #dispatch
            }
        });
        self.attention_positions_fns(name, layer);
    }

    /// The attention functions the entry dispatches to, one per count of cached positions.
    fn attention_positions_fns(&mut self, name: &Ident, layer: usize) {
        let t = self.f.t;
        let s = self.f.shape;
        let AttentionDims { l, e, hd, r, epad } = self.f.attention_dims();
        let ty = self.ity(e);
        let attrs = self.attrs();
        let ops = LaneOps {
            add: &|a, b| t.add_i32(a, b),
            swap: &|v, d| t.swap_i32(v, d),
            store: &|p, v| t.store_i32(p, v),
            load: &|p| t.load_i32(p),
            scalar_add: &|a, b| quote! { (#a).wrapping_add(#b) },
            elem: quote! { i32 },
            zero: quote! { 0i32 },
        };
        let score = |body: &mut Body, row: usize| -> Vec<T> {
            // Exact i32 dots per head, replicated over the head's lanes, then scaled in f32
            // exactly as the reference scales them.
            let prods: Vec<Ident> = (0..r)
                .map(|i| {
                    let o = row * epad + i * l;
                    body.bind(
                        "p",
                        t.mul_i32(quote! { q[#i] }, t.load_i32(quote! { kc.add(#o) })),
                    )
                })
                .collect();
            attn::reduce_heads(t, &s, body, &prods, &ops)
                .into_iter()
                .map(|d| q412_score(&mut Vector(t), t.i32_to_f32(d), hd))
                .collect()
        };
        let weigh = |body: &mut Body, i: usize, exps: &[Ident]| -> T {
            // The denominator and the weighted sum in position order, as the reference.
            let mut sum = t.zero();
            for ex in exps {
                sum = t.add(sum, quote! { #ex });
            }
            let sum = body.bind("sum", sum);
            let mut acc = t.zero();
            for (row, ex) in exps.iter().enumerate() {
                let o = row * epad + i * l;
                let p = t.div(quote! { #ex }, quote! { #sum });
                acc = t.add(acc, t.mul(p, t.load(quote! { vc.add(#o) })));
            }
            let acc = body.bind("acc", acc);
            t.sat16(t.f32_to_i32_round(q412_units(&mut Vector(t), quote! { #acc })))
        };
        let doc = |pos: usize| {
            let n = pos + 1;
            format!(
                "Q4.12 attention of layer {layer} over {n} cached position{} (0..={pos}): exact i32 \
                 dots q·K[t] per head, scores `dot/4096/4096 · 1/sqrt({hd})`, a max-subtracted \
                 softmax with the datapath's exp (sums in position order), `o = Σ p_t·V[t]` with \
                 separate multiplies and adds, rounded back to Q4.12.",
                if n == 1 { "" } else { "s" }
            )
        };
        self.f.items.extend(attn::unrolled(&attn::Unrolled {
            t,
            shape: s,
            name,
            attrs: &attrs,
            key_elem: quote! { i32 },
            ty,
            score: &score,
            weigh: &weigh,
            doc: &doc,
        }));
    }
}
