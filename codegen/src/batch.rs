//! The lane-batched renderer: one independent stream per SIMD lane. Every value of the forward
//! pass becomes one register holding it for all the lane's streams, so each FMA works for all of
//! them (a weight broadcast from memory times a register of activations) and the dependency chain
//! of one token is hidden behind the others'.
//!
//! Streams differ in position, so the KV cache is a ring indexed by the step count (every lane
//! writes the same slot each step) and a lane attends to the slots no older than its position.
//! The Q4.12 kernels keep the reference's operation order lane by lane (sums over channels and
//! positions run in order), so their integers match it bit for bit.

use crate::emit::{Body, Vector, tree};
use crate::expand::KernelId;
use crate::sample::{exp_fn, exp2_fn};
use crate::target::Target;
use microgpt_model::numerics::{
    q412_real, q412_rms_scale, q412_rms_value, q412_score, q412_units, rms_factor,
};
use microgpt_model::{Buffer, Fusion, Layout, Op, Param, Precision, Program, Shape};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use std::collections::HashMap;

type T = TokenStream;

/// Generates the step of one lane-batched kernel.
pub struct BatchGen<'a> {
    t: Target,
    precision: Precision,
    vnni: bool,
    shape: Shape,
    program: &'a Program,
    layout: Layout,
    items: Vec<T>,
}

impl<'a> BatchGen<'a> {
    pub fn new(id: KernelId, program: &'a Program) -> BatchGen<'a> {
        let shape = *program.shape();
        BatchGen {
            t: id.target,
            precision: id.precision,
            vnni: id.vnni(),
            shape,
            program,
            layout: Layout::new(shape),
            items: Vec::new(),
        }
    }

    fn l(&self) -> usize {
        self.t.lanes()
    }

    fn attrs(&self) -> T {
        self.t.fn_attrs(self.vnni)
    }

    fn q412(&self) -> bool {
        self.precision == Precision::Q412
    }

    /// The lane vector type of a buffer's elements.
    fn vty(&self) -> T {
        if self.q412() { self.t.vi() } else { self.t.vf() }
    }

    fn arr(&self, n: usize) -> T {
        let v = self.vty();
        quote! { [#v; #n] }
    }

    /// The op functions and the step body.
    pub fn render(mut self) -> (Vec<T>, T) {
        let t = self.t;
        let mut body = Body::default();
        let mut vals: HashMap<Buffer, Ident> = HashMap::new();
        let l = self.l();
        body.push({
            // Tokens and positions are below 2^31 (checked), so their u32 bits are the i32 values.
            let tok = t.load_i32(quote! { toks.as_ptr() as *const i32 });
            let pos = t.load_i32(quote! { pos.as_ptr() as *const i32 });
            quote! { let tokv = #tok; let posv = #pos; }
        });
        let program = self.program;
        let ops = program.ops();
        let mut index = 0;
        while index < ops.len() {
            // A matvec whose output the next op rectifies takes the rectifier into its last
            // instructions (so the hidden vector is written once).
            let relu = self.program.group(Fusion::MatVecRelu, index).is_some();
            self.render_op(index, &ops[index], relu, &mut body, &mut vals);
            index += if relu { 2 } else { 1 };
        }
        let logits = vals[&Buffer::Logits].clone();
        let vocab = self.shape.vocab;
        // Logits as real numbers, lane-major per id (the fp32 ones divided by T).
        let fl: Vec<T> = (0..vocab)
            .map(|i| {
                if self.q412() {
                    q412_real(&mut Vector(t), t.i32_to_f32(quote! { #logits[#i] }))
                } else {
                    quote! { #logits[#i] }
                }
            })
            .collect();
        let lf = body.bind("z", quote! { [#(#fl),*] });
        let stores: Vec<T> = (0..vocab)
            .map(|i| {
                let o = i * l;
                t.store(quote! { k.logits.as_mut_ptr().add(#o) }, quote! { #lf[#i] })
            })
            .collect();
        body.push(quote! { #(#stores)* });
        let scale = if self.q412() {
            quote! { k.inv_temperature }
        } else {
            quote! { 1.0f32 }
        };
        body.push(quote! { sample(#lf, rs, #scale, next); });
        let attrs = self.attrs();
        // The Q4.12 attention's exponential is the reference's; everything else takes powers of
        // two.
        if self.q412() {
            self.items.push(exp_fn(t, false, &attrs, &format_ident!("exp_v")));
        }
        self.items.push(exp2_fn(t, &attrs, &format_ident!("exp2_v")));
        self.items.push(self.sample_fn());
        (self.items, body.into_tokens())
    }

    /// Renders one op: its function among the items, its call in the step body; `relu`: the op
    /// is a matvec and the next op (skipped by the caller) a rectifier of its output.
    fn render_op(
        &mut self,
        index: usize,
        op: &Op,
        relu: bool,
        body: &mut Body,
        vals: &mut HashMap<Buffer, Ident>,
    ) {
        let l = self.l();
        let head = format!(
            "Op {index} of the forward pass, shape {}, {l} streams in the lanes: `{op}`.",
            self.shape
        );
        let name = |suffix: &str| format_ident!("op{:02}_{}", index, suffix);
        let (made, call) = match *op {
            Op::Embed { out } => (out, self.embed(name("embed"), &head)),
            Op::RmsNorm { input, out } => (out, self.rmsnorm(name("rmsnorm"), &head, &vals[&input])),
            Op::MatVec { weight, input, out } => {
                let name = name(&format!(
                    "matvec_{}{}",
                    weight.name().replace('.', "_"),
                    if relu { "_relu" } else { "" }
                ));
                (out, self.matvec(name, &head, weight, relu, &vals[&input]))
            }
            Op::Logits { input } => {
                let x = &vals[&input];
                (
                    Buffer::Logits,
                    self.matvec(name("logits"), &head, Param::LmHead, false, x),
                )
            }
            Op::Relu { buf } => (buf, self.relu(name("relu"), &head, buf, &vals[&buf])),
            Op::Add { input, into } => (
                into,
                self.add(name("residual_add"), &head, &vals[&input], &vals[&into]),
            ),
            Op::Attention { layer, q, k, v, out } => {
                let qkv = [q, k, v].map(|b| &vals[&b]);
                (out, self.attention(name("attention"), &head, layer, qkv))
            }
        };
        vals.insert(made, body.bind(made.name(), call));
    }

    /// `W · x` (with `relu`, rectified); returns the call.
    fn matvec(&mut self, name: Ident, head: &str, weight: Param, relu: bool, x: &Ident) -> T {
        self.matvec_fn(&name, head, weight, relu);
        quote! { #name(w, #x) }
    }

    /// Attention over the ring cache of `layer`; returns the call.
    fn attention(&mut self, name: Ident, head: &str, layer: usize, [q, k, v]: [&Ident; 3]) -> T {
        self.attention_fn(&name, head, layer);
        quote! { #name(keys, values, slot, maxpos, posv, #q, #k, #v) }
    }

    /// `x = wte[tok] + wpe[pos]` for every lane; returns the call.
    fn embed(&mut self, name: Ident, head: &str) -> T {
        let (t, s, l) = (self.t, self.shape, self.l());
        let e = s.embd;
        let q = self.q412();
        let table = EmbTable::new(t, s);
        let load = |at: usize| {
            if q {
                t.load_i32(quote! { emb.add(#at) })
            } else {
                t.load(quote! { emb.add(#at) })
            }
        };
        let regs: Vec<T> = (0..e)
            .map(|c| {
                let (a, b) = match table.padded {
                    // One or two registers hold a column of each table; a permute picks every
                    // lane's entry.
                    Some((pt, pp)) => {
                        let te: Vec<T> = (0..pt / l).map(|i| load(c * pt + i * l)).collect();
                        let pe: Vec<T> = (0..pp / l).map(|i| load(e * pt + c * pp + i * l)).collect();
                        (t.lookup(&te, quote! { tok }, q), t.lookup(&pe, quote! { pos }, q))
                    }
                    None => {
                        let wte_len = s.vocab * e;
                        (
                            t.gather(quote! { emb.add(#c) }, quote! { te }, q),
                            t.gather(quote! { emb.add(#wte_len + #c) }, quote! { pe }, q),
                        )
                    }
                };
                if q { t.wrap16(t.add_i32(a, b)) } else { t.add(a, b) }
            })
            .collect();
        let pre = if table.padded.is_some() {
            quote! {}
        } else {
            let te = t.mul_i32(quote! { tok }, t.splat_i32(quote! { #e as i32 }));
            let pe = t.mul_i32(quote! { pos }, t.splat_i32(quote! { #e as i32 }));
            quote! { let te = #te; let pe = #pe; }
        };
        let vi = t.vi();
        let elem = if q {
            quote! { i32 }
        } else {
            quote! { f32 }
        };
        let doc = format!(
            "{head} Each lane's entries of the embedding tables, {}.",
            if table.padded.is_some() {
                "picked from table columns held in registers by a permute"
            } else {
                "gathered from the tables' rows"
            }
        );
        let (attrs, ty_e) = (self.attrs(), self.arr(e));
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(emb: *const #elem, tok: #vi, pos: #vi) -> #ty_e {
                #pre
                [#(#regs),*]
            }
        });
        quote! { #name(k.emb.as_ptr(), tokv, posv) }
    }

    /// RMSNorm, every lane by its own scale; returns the call.
    fn rmsnorm(&mut self, name: Ident, head: &str, x: &Ident) -> T {
        let (t, e) = (self.t, self.shape.embd);
        let (pre, outs, doc) = if self.q412() {
            let fx: Vec<T> = (0..e)
                .map(|c| q412_real(&mut Vector(t), t.i32_to_f32(quote! { x[#c] })))
                .collect();
            let mut ms = t.zero();
            for c in 0..e {
                ms = t.add(ms, t.mul(quote! { fx[#c] }, quote! { fx[#c] }));
            }
            let scale = q412_rms_scale(&mut Vector(t), quote! { ms }, e);
            let vf = t.vf();
            let outs: Vec<T> = (0..e)
                .map(|c| {
                    let y = q412_rms_value(&mut Vector(t), quote! { fx[#c] }, quote! { scale });
                    t.sat16(t.f32_to_i32_round(y))
                })
                .collect();
            (
                quote! { let fx: [#vf; #e] = [#(#fx),*]; let ms = #ms; let scale = #scale; },
                outs,
                "In f32 as the reference: each lane's squares summed in channel order, the scale, every value rounded half to even and saturated.",
            )
        } else {
            let sq = tree(
                (0..e)
                    .map(|c| t.mul(quote! { x[#c] }, quote! { x[#c] }))
                    .collect(),
                |a, b| t.add(a, b),
            );
            let scale = rms_factor(&mut Vector(t), quote! { ss }, e, None);
            let outs = (0..e)
                .map(|c| t.mul(quote! { x[#c] }, quote! { scale }))
                .collect();
            (
                quote! { let ss = #sq; let scale = #scale; },
                outs,
                "Every lane's own scale.",
            )
        };
        let doc = format!("{head} {doc}");
        let (attrs, ty_e) = (self.attrs(), self.arr(e));
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(x: #ty_e) -> #ty_e {
                #pre
                [#(#outs),*]
            }
        });
        quote! { #name(#x) }
    }

    /// `buf = relu(buf)` (where no matvec took it in); returns the call.
    fn relu(&mut self, name: Ident, head: &str, buf: Buffer, x: &Ident) -> T {
        let t = self.t;
        let n = buf.len(&self.shape);
        let ty = self.arr(n);
        let regs: Vec<T> = (0..n)
            .map(|i| {
                if self.q412() {
                    t.max0_i32(quote! { h[#i] })
                } else {
                    t.max(quote! { h[#i] }, t.zero())
                }
            })
            .collect();
        let attrs = self.attrs();
        self.items.push(quote! {
            #[doc = #head]
            #attrs
            unsafe fn #name(h: #ty) -> #ty {
                [#(#regs),*]
            }
        });
        quote! { #name(#x) }
    }

    /// `into += input` (saturated in Q4.12); returns the call.
    fn add(&mut self, name: Ident, head: &str, input: &Ident, into: &Ident) -> T {
        let t = self.t;
        let e = self.shape.embd;
        let regs: Vec<T> = (0..e)
            .map(|i| {
                if self.q412() {
                    t.sat16(t.add_i32(quote! { into[#i] }, quote! { input[#i] }))
                } else {
                    t.add(quote! { into[#i] }, quote! { input[#i] })
                }
            })
            .collect();
        let (attrs, ty_e) = (self.attrs(), self.arr(e));
        self.items.push(quote! {
            #[doc = #head]
            #attrs
            unsafe fn #name(into: #ty_e, input: #ty_e) -> #ty_e {
                [#(#regs),*]
            }
        });
        quote! { #name(#into, #input) }
    }

    /// `W · x` with each weight broadcast from memory and multiplied by the register holding one
    /// input for every lane; rows a block at a time so their sums stay in registers. With `relu`,
    /// negative outputs become zero (the rectifier that follows the matvec in the op list).
    fn matvec_fn(&mut self, name: &Ident, doc_head: &str, weight: Param, relu: bool) {
        let t = self.t;
        let tensor = self.layout.tensor(weight).clone();
        let (rows, cols, off) = (tensor.rows, tensor.cols, tensor.offset);
        let block = row_block(t, rows);
        let mut body = Body::default();
        let mut outs = Vec::new();
        let q = self.q412();
        let (xs, steps) = self.matvec_inputs(&mut body, cols);
        for first in (0..rows).step_by(block) {
            let rows = first..(first + block).min(rows);
            outs.extend(self.row_block_loop(&mut body, rows, off, cols, (&xs, steps), relu));
        }
        let attrs = self.attrs();
        let (in_ty, out_ty) = (self.arr(cols), self.arr(rows));
        let elem = if q {
            quote! { i16 }
        } else {
            quote! { f32 }
        };
        let doc = format!(
            "{doc_head} A {rows}×{cols} matrix times a vector per lane: each weight broadcast from \
             memory{}, rows {block} at a time in one loop over the columns{}.",
            if q && t != Target::Neon {
                " as a pair of i16 (two inputs per 32-bit lane)"
            } else {
                ""
            },
            if relu {
                "; then the rectifier (the next op)"
            } else {
                ""
            }
        );
        let b = body.into_tokens();
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const #elem, x: #in_ty) -> #out_ty {
                #b
                [#(#outs),*]
            }
        });
    }

    /// The inputs the matvec loop reads, one vector per step, and the step count: as given, as
    /// i16 halves (NEON Q4.12), or as i16 pairs (x86 Q4.12).
    fn matvec_inputs(&self, body: &mut Body, cols: usize) -> (T, usize) {
        let t = self.t;
        let q = self.q412();
        if q && t == Target::Neon {
            let halves: Vec<T> = (0..cols).map(|c| t.narrow_i16(quote! { x[#c] })).collect();
            body.push(quote! { let xh = [#(#halves),*]; });
        }
        if q && t != Target::Neon {
            let pairs: Vec<T> = (0..cols.div_ceil(2))
                .map(|p| {
                    let i = 2 * p;
                    let lo = quote! { x[#i] };
                    let hi = if 2 * p + 1 < cols {
                        let i = 2 * p + 1;
                        quote! { x[#i] }
                    } else {
                        t.zero_i32()
                    };
                    t.pack_pairs(lo, hi)
                })
                .collect();
            body.push(quote! { let xp = [#(#pairs),*]; });
        }
        let xs = match (q, t) {
            (true, Target::Neon) => quote! { xh },
            (true, _) => quote! { xp },
            _ => quote! { x },
        };
        let steps = if q && t != Target::Neon {
            cols.div_ceil(2)
        } else {
            cols
        };
        (xs, steps)
    }

    /// The outputs of `rows` (a block of them, whose sums stay in registers): one loop over the
    /// columns, each weight broadcast from memory.
    fn row_block_loop(
        &self,
        body: &mut Body,
        rows: std::ops::Range<usize>,
        off: usize,
        cols: usize,
        (xs, steps): (&T, usize),
        relu: bool,
    ) -> Vec<T> {
        let t = self.t;
        let q = self.q412();
        let rs: Vec<usize> = rows.collect();
        let accs: Vec<Ident> = rs.iter().map(|_| body.fresh("acc")).collect();
        // Accumulators start from zero behind a fence, so a block starts after the one before
        // it has finished instead of interleaving with it (and spilling).
        let zero = if q { t.zero_i32() } else { t.zero() };
        for acc in &accs {
            body.push(quote! { let mut #acc = #zero; });
        }
        body.push(t.pin(&accs));
        let fmas: Vec<T> = rs
            .iter()
            .zip(&accs)
            .map(|(&r, acc)| {
                let at = off + r * cols;
                let expr = match (q, t) {
                    (false, _) => t.fma_by_scalar(quote! { #acc }, quote! { xc }, quote! { *w.add(#at + c) }),
                    (true, Target::Neon) => {
                        t.widen_mac_by_scalar(quote! { #acc }, quote! { xc }, quote! { *w.add(#at + c) })
                    }
                    (true, _) => {
                        let pair = quote! { (w.add(#at + 2 * c) as *const i32).read_unaligned() };
                        t.pair_dot(quote! { #acc }, quote! { xc }, pair, self.vnni)
                    }
                };
                quote! { #acc = #expr; }
            })
            .collect();
        // One loop over the columns, kept rolled: the counter goes through an empty `asm!`
        // so the compiler cannot unroll it (unrolled, every FMA carries a 32-bit weight
        // offset and a step's code outgrows the instruction cache).
        body.push(quote! {
            let mut c = 0usize;
            while c < #steps {
                let xc = *#xs.as_ptr().add(c);
                #(#fmas)*
                c += 1;
                ::core::arch::asm!("/* {0} */", inout(reg) c, options(nomem, nostack, preserves_flags));
            }
        });
        body.push(t.pin(&accs));
        accs.into_iter()
            .map(|acc| match (q, relu) {
                (true, false) => t.sat16(t.shr12(quote! { #acc })),
                (true, true) => t.max0_i32(t.sat16(t.shr12(quote! { #acc }))),
                (false, false) => quote! { #acc },
                (false, true) => t.max(quote! { #acc }, t.zero()),
            })
            .collect()
    }

    /// Stores this step's keys and values (the registers `k` and `v`) at the ring slot `slot`
    /// of layer `layer`'s caches; the Q4.12 values as real numbers.
    fn kv_stores(&self, layer: usize) -> Vec<T> {
        let t = self.t;
        let s = self.shape;
        let (e, l) = (s.embd, self.l());
        let base = layer * s.block * e * l;
        let row = e * l;
        let q = self.q412();
        (0..e)
            .map(|c| {
                let o = c * l;
                let kv = if q {
                    t.store_i32(quote! { keys.add(#base + slot * #row + #o) }, quote! { k[#c] })
                } else {
                    t.store(quote! { keys.add(#base + slot * #row + #o) }, quote! { k[#c] })
                };
                let vv = if q {
                    q412_real(&mut Vector(t), t.i32_to_f32(quote! { v[#c] }))
                } else {
                    quote! { v[#c] }
                };
                let vs = t.store(quote! { values.add(#base + slot * #row + #o) }, vv);
                quote! { #kv #vs }
            })
            .collect()
    }

    /// The offset in layer `layer`'s caches of the ring slot written `age` steps ago.
    fn ring_offset(&self, layer: usize) -> T {
        let s = self.shape;
        let row = s.embd * self.l();
        let (base, block) = (layer * s.block * row, s.block);
        quote! { #base + ((slot + #block - age) % #block) * #row }
    }

    /// Every head's running sum of weights `sum` plus this age's weights `ex`.
    fn head_sums(&self) -> Vec<T> {
        let t = self.t;
        (0..self.shape.heads)
            .map(|h| t.add(quote! { sum[#h] }, quote! { ex[#h] }))
            .collect()
    }

    /// The fp32 score of head `h`, `Σ q·key` over the head's channels with the keys `key(j)`,
    /// from `init` when given (a vector expression) or from the first product.
    fn dot_f32(&self, h: usize, init: Option<T>, key: impl Fn(usize) -> T) -> T {
        let t = self.t;
        let hd = self.shape.head_dim();
        let mut d = init;
        for j in h * hd..h * hd + hd {
            let kv = key(j);
            d = Some(match d {
                None => t.mul(quote! { q[#j] }, kv),
                Some(d) => t.fma(quote! { q[#j] }, kv, d),
            });
        }
        d.expect("head_dim >= 1")
    }

    fn attention_fn(&mut self, name: &Ident, doc_head: &str, layer: usize) {
        let t = self.t;
        let s = self.shape;
        let (e, heads, block) = (s.embd, s.heads, s.block);
        let q = self.q412();
        let ty = self.arr(e);
        let vf = t.vf();
        let vi = t.vi();
        let zero = t.zero();
        let neg_inf = t.splat(quote! { f32::NEG_INFINITY });
        let ge_valid = t.ge_i32(quote! { posv }, quote! { age as i32 });
        let stores = self.kv_stores(layer);
        let at = self.ring_offset(layer);
        let scores = self.age_scores();
        let maxes: Vec<T> = (0..heads)
            .map(|h| t.max(quote! { m[#h] }, quote! { sc[#h] }))
            .collect();
        let exps = self.age_weights();
        let sums = self.head_sums();
        let (accs, outs) = self.weighted_values();
        let keys_ty = if q {
            quote! { *mut i32 }
        } else {
            quote! { *mut f32 }
        };
        // The exponentials and their sums in one loop, then the weighted sum of values in
        // another (one fused loop holds too many live registers). The Q4.12 sums run oldest
        // first, as the reference's; masked lanes add exact zeros.
        let ages = if q {
            quote! { (0..=maxpos).rev() }
        } else {
            quote! { 0..=maxpos }
        };
        let pass2 = quote! {
            let mut sum: [#vf; #heads] = [#zero; #heads];
            for age in #ages {
                let valid = #ge_valid;
                let sc = scores[age].assume_init();
                let ex: [#vf; #heads] = [#(#exps),*];
                sum = [#(#sums),*];
                scores[age].write(ex);
            }
            let mut acc: [#vf; #e] = [#zero; #e];
            for age in #ages {
                let ex = scores[age].assume_init();
                let vt = values.add(#at);
                acc = [#(#accs),*];
            }
        };
        let doc = format!(
            "{doc_head} Stores the lanes' key and value at the ring slot of this step, then per lane \
             and head a softmax over the slots no older than the lane's position (older ones \
             masked out) and the weighted sum of values."
        );
        let attrs = self.attrs();
        // The fp32 kernels first try the one-pass form (`shifted_fn`) and come here only when it
        // could overflow.
        let (name, doc, cold) = if q {
            (name.clone(), doc, quote! {})
        } else {
            let stable = format_ident!("{}_stable", name);
            self.shifted_fn(name, &stable, doc_head, layer);
            let doc = format!(
                "{doc} Every lane's scores shifted by their maximum (three passes over the slots): \
                 taken when the one-pass form could overflow."
            );
            (stable, doc, quote! { #[cold] #[inline(never)] })
        };
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            #cold
            #[allow(clippy::too_many_arguments)]
            unsafe fn #name(keys: #keys_ty, values: *mut f32, slot: usize, maxpos: usize, posv: #vi, q: #ty, k: #ty, v: #ty) -> #ty {
                #(#stores)*
                // Written for ages 0..=maxpos below, and only those are read.
                let mut scores: [::core::mem::MaybeUninit<[#vf; #heads]>; #block] =
                    [const { ::core::mem::MaybeUninit::uninit() }; #block];
                let mut m: [#vf; #heads] = [#neg_inf; #heads];
                for age in 0..=maxpos {
                    let valid = #ge_valid;
                    let kt = keys.add(#at);
                    let sc: [#vf; #heads] = [#(#scores),*];
                    m = [#(#maxes),*];
                    scores[age].write(sc);
                }
                #pass2
                [#(#outs),*]
            }
        });
    }

    /// The fp32 attention in one pass over the slots: every score is shifted by the score of
    /// this step's own key (age 0, valid in every lane) instead of the maximum, so age 0 weighs
    /// exactly 1 and each older slot's weight, sum and weighted value come from one load of its
    /// key and value. The scores are in base 2 (the query weights carry `log2(e)`, see
    /// [`base2_query_scale`](microgpt_model::numerics::base2_query_scale)) and the weights
    /// `2^(score - own)`. Softmax does not depend on the shift; the maximum only guards against
    /// overflow, so when a lane's sum of weights reaches 2^64 (for one, a base-2 score 64 above
    /// this step's own) the step falls back to `stable`, the max-shifted form.
    /// Per head, one age's score for every lane (`kt`: the keys of that age; lanes whose
    /// position is younger than the age get -∞).
    fn age_scores(&self) -> Vec<T> {
        let (t, hd, l) = (self.t, self.shape.head_dim(), self.l());
        let q = self.q412();
        let neg_inf = t.splat(quote! { f32::NEG_INFINITY });
        (0..self.shape.heads)
            .map(|h| {
                if q {
                    let mut dot = t.zero_i32();
                    for j in h * hd..h * hd + hd {
                        let o = j * l;
                        let kv = t.load_i32(quote! { kt.add(#o) });
                        dot = t.add_i32(dot, t.mul_i32(quote! { q[#j] }, kv));
                    }
                    let score = q412_score(&mut Vector(t), t.i32_to_f32(dot), hd);
                    t.select(quote! { valid }, score, neg_inf.clone())
                } else {
                    let dot = self.dot_f32(h, None, |j| {
                        let o = j * l;
                        t.load(quote! { kt.add(#o) })
                    });
                    t.select(quote! { valid }, dot, neg_inf.clone())
                }
            })
            .collect()
    }

    /// Per head, one age's softmax weight (`exp_v` of the score less the maximum in Q4.12,
    /// `exp2_v` in fp32, whose scores are in base 2), zero for masked lanes.
    fn age_weights(&self) -> Vec<T> {
        let t = self.t;
        let q = self.q412();
        let zero = t.zero();
        (0..self.shape.heads)
            .map(|h| {
                let d = t.sub(quote! { sc[#h] }, quote! { m[#h] });
                let ex = if q {
                    quote! { exp_v(#d) }
                } else {
                    quote! { exp2_v(#d) }
                };
                t.select(quote! { valid }, ex, zero.clone())
            })
            .collect()
    }

    /// The weighted sum of one age's values added to the accumulators, and the outputs made of
    /// the accumulators (Q4.12: weights divided by the sum first and the output rounded back;
    /// fp32: the sum divides the output).
    fn weighted_values(&self) -> (Vec<T>, Vec<T>) {
        let (t, e, hd, l) = (self.t, self.shape.embd, self.shape.head_dim(), self.l());
        let q = self.q412();
        let accs: Vec<T> = (0..e)
            .map(|c| {
                let h = c / hd;
                let o = c * l;
                let vv = t.load(quote! { vt.add(#o) });
                if q {
                    let p = t.div(quote! { ex[#h] }, quote! { sum[#h] });
                    t.add(quote! { acc[#c] }, t.mul(p, vv))
                } else {
                    t.fma(quote! { ex[#h] }, vv, quote! { acc[#c] })
                }
            })
            .collect();
        let outs: Vec<T> = (0..e)
            .map(|c| {
                let h = c / hd;
                if q {
                    t.sat16(t.f32_to_i32_round(q412_units(&mut Vector(t), quote! { acc[#c] })))
                } else {
                    t.div(quote! { acc[#c] }, quote! { sum[#h] })
                }
            })
            .collect();
        (accs, outs)
    }

    fn shifted_fn(&mut self, name: &Ident, stable: &Ident, doc_head: &str, layer: usize) {
        let t = self.t;
        let s = self.shape;
        let (e, hd, heads, l) = (s.embd, s.head_dim(), s.heads, self.l());
        let ty = self.arr(e);
        let (vf, vi) = (t.vf(), t.vi());
        let zero = t.zero();
        let stores = self.kv_stores(layer);
        let at = self.ring_offset(layer);
        let own: Vec<T> = (0..heads)
            .map(|h| t.sub(zero.clone(), self.dot_f32(h, None, |j| quote! { k[#j] })))
            .collect();
        let weights: Vec<T> = (0..heads)
            .map(|h| {
                let d = self.dot_f32(h, Some(quote! { neg_own[#h] }), |j| {
                    let o = j * l;
                    t.load(quote! { kt.add(#o) })
                });
                t.select(quote! { valid }, quote! { exp2_v(#d) }, zero.clone())
            })
            .collect();
        let sums = self.head_sums();
        let accs: Vec<T> = (0..e)
            .map(|c| {
                let (h, o) = (c / hd, c * l);
                t.fma(
                    quote! { ex[#h] },
                    t.load(quote! { vt.add(#o) }),
                    quote! { acc[#c] },
                )
            })
            .collect();
        let limit = t.splat(quote! { 18446744073709551616.0f32 });
        let bounded = (0..heads)
            .map(|h| t.all_lt(quote! { sum[#h] }, limit.clone()))
            .reduce(|a, b| quote! { #a && #b })
            .expect("heads >= 1");
        let recips: Vec<T> = (0..heads)
            .map(|h| t.div(t.splat(quote! { 1.0f32 }), quote! { sum[#h] }))
            .collect();
        let outs: Vec<T> = (0..e)
            .map(|c| {
                let h = c / hd;
                t.mul(quote! { acc[#c] }, quote! { inv[#h] })
            })
            .collect();
        let doc = format!(
            "{doc_head} Stores the lanes' key and value at the ring slot of this step, then per lane \
             and head a softmax over the slots no older than the lane's position (older ones \
             masked out) and the weighted sum of values, in one pass: scores shifted by this \
             step's own score, whose weight is then exactly 1 (see `{stable}` for the fallback)."
        );
        let attrs = self.attrs();
        let one = t.splat(quote! { 1.0f32 });
        let ge_valid = t.ge_i32(quote! { posv }, quote! { age as i32 });
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            #[allow(clippy::too_many_arguments)]
            unsafe fn #name(keys: *mut f32, values: *mut f32, slot: usize, maxpos: usize, posv: #vi, q: #ty, k: #ty, v: #ty) -> #ty {
                #(#stores)*
                let neg_own: [#vf; #heads] = [#(#own),*];
                let mut sum: [#vf; #heads] = [#one; #heads];
                let mut acc: #ty = v;
                for age in 1..=maxpos {
                    let valid = #ge_valid;
                    let at = #at;
                    let (kt, vt) = (keys.add(at), values.add(at));
                    let ex: [#vf; #heads] = [#(#weights),*];
                    sum = [#(#sums),*];
                    acc = [#(#accs),*];
                }
                if !(#bounded) {
                    return #stable(keys, values, slot, maxpos, posv, q, k, v);
                }
                let inv: [#vf; #heads] = [#(#recips),*];
                [#(#outs),*]
            }
        });
    }

    /// Per lane: `softmax(z · scale)` and the canonical inverse CDF, as a count of the running
    /// sums (in id order, as the reference adds them) at or below `r · Σe`.
    fn sample_fn(&self) -> T {
        let t = self.t;
        let s = self.shape;
        let vocab = s.vocab;
        let l = self.l();
        let vf = t.vf();
        let mut body = Body::default();
        let zs: Vec<Ident> = (0..vocab)
            .map(|i| body.bind("z", t.mul(quote! { z[#i] }, t.splat(quote! { scale }))))
            .collect();
        let m = body.bind(
            "m",
            tree(zs.iter().map(|z| quote! { #z }).collect(), |a, b| t.max(a, b)),
        );
        // e^(z - m) as 2^(z·log2(e) - m·log2(e)).
        let log2e = std::f32::consts::LOG2_E;
        let neg_log2e = -log2e;
        let nm = body.bind("nm", t.mul(quote! { #m }, t.splat(quote! { #neg_log2e })));
        let mut running: Option<Ident> = None;
        let mut cums = Vec::new();
        for z in &zs {
            let d = t.fma(quote! { #z }, t.splat(quote! { #log2e }), quote! { #nm });
            let e = quote! { exp2_v(#d) };
            let c = match &running {
                None => body.bind("c", e),
                Some(prev) => body.bind("c", t.add(quote! { #prev }, e)),
            };
            cums.push(c.clone());
            running = Some(c);
        }
        let total = running.expect("vocab >= 2");
        let thr = t.mul(t.load(quote! { rs.as_ptr() }), quote! { #total });
        body.push(quote! { let thr = #thr; });
        // Four independent counts (a shorter chain), added at the end. Bound one step at a time:
        // `count_where` may use its count twice.
        let sums = cums[..vocab - 1].chunks((vocab - 1).div_ceil(4));
        let counts: Vec<T> = sums
            .map(|chunk| {
                let mut count = body.bind("n", t.zero_i32());
                for c in chunk {
                    count = body.bind(
                        "n",
                        t.count_where(quote! { #count }, t.le(quote! { #c }, quote! { thr })),
                    );
                }
                quote! { #count }
            })
            .collect();
        let count = body.bind("n", tree(counts, |a, b| t.add_i32(a, b)));
        let store = t.store_i32(quote! { next.as_mut_ptr() as *mut i32 }, quote! { #count });
        let attrs = self.attrs();
        let b = body.into_tokens();
        let doc = format!(
            "The sampler of every lane over {vocab} ids: `softmax(logits / T)` and the canonical inverse CDF."
        );
        quote! {
            #[doc = #doc]
            #attrs
            unsafe fn sample(z: [#vf; #vocab], rs: &[f32; #l], scale: f32, next: &mut [u32; #l]) {
                #b
                #store
            }
        }
    }
}

/// How a batch kernel keeps the embedding tables (`emb`, f32 or the Q4.12 words as i32): on
/// AVX-512, when both tables have at most 32 rows, column by column with each column padded to 16
/// or 32 entries (the weight plan's columns: one or two registers, so a lane's entry is one permute
/// away); otherwise row by row, wte then wpe, for gathers. The matrices stay in the canonical
/// row-major order: every lane multiplies the same weight by its own input, so a matvec reads one
/// weight at a time and broadcasts it, and no rearrangement helps.
pub(crate) struct EmbTable {
    /// The padded column lengths of wte and wpe, when laid out by columns.
    padded: Option<(usize, usize)>,
}

impl EmbTable {
    pub(crate) fn new(t: Target, s: Shape) -> EmbTable {
        let pad = |n: usize| if n <= 16 { 16 } else { 32 };
        let padded =
            (t == Target::Avx512 && s.vocab <= 32 && s.block <= 32).then(|| (pad(s.vocab), pad(s.block)));
        EmbTable { padded }
    }

    /// An expression building the table from `words` (the whole parameter vector as `elem`s)
    /// and `layout` (the weights' layout).
    pub(crate) fn build(&self, s: Shape, elem: &T) -> T {
        let (e, vocab, block) = (s.embd, s.vocab, s.block);
        let order = match self.padded {
            Some((pt, pp)) => quote! {
                out.extend(::microgpt_runtime::kernel::layout::columns(&words[wte], #vocab, #e, #pt));
                out.extend(::microgpt_runtime::kernel::layout::columns(&words[wpe], #block, #e, #pp));
            },
            None => quote! {
                out.extend_from_slice(&words[wte]);
                out.extend_from_slice(&words[wpe]);
            },
        };
        quote! {{
            let wte = layout.tensor(::microgpt_model::Param::Wte).range();
            let wpe = layout.tensor(::microgpt_model::Param::Wpe).range();
            let mut out: ::std::vec::Vec<#elem> = ::std::vec::Vec::new();
            #order
            ::microgpt_runtime::kernel::Aligned::from_slice(&out)
        }}
    }
}

/// Rows per accumulator block of a matvec with `rows` rows: the vector registers less three (the
/// input column being read, a scratch register for a product, one to spare) as accumulators,
/// split evenly over the rows. Within a block each input column is loaded once and updates every
/// accumulator.
fn row_block(t: Target, rows: usize) -> usize {
    let regs = match t {
        Target::Avx512 | Target::Neon => 32,
        _ => 16,
    };
    let most = regs - 3;
    rows.div_ceil(rows.div_ceil(most))
}
