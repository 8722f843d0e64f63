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

use crate::attn::{self, LaneOps};
use crate::emit::{Body, Expr, ident, tree};
use crate::frame::Frame;
use crate::target::Target;
use microgpt_model::numerics::{EXP_MIN, ExpOps, F32Ops, exp_rule, exp2_rule, rms_factor};
use microgpt_model::plan::Arrangement;
use microgpt_model::{Buffer, Op, Param, Program, Shape};
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
    pub f: Frame<'a>,
}

impl<'a> F32Gen<'a> {
    pub fn new(t: Target, program: &'a Program, table: bool) -> F32Gen<'a> {
        let l = t.lanes();
        let f = Frame::new(t, program, table, 16, |rows, cols| {
            if reduce_rows(t, rows, cols) {
                Arrangement::Rows {
                    cols_pad: cols.next_multiple_of(l),
                }
            } else {
                Arrangement::Columns {
                    rows_pad: rows.next_multiple_of(l),
                }
            }
        });
        F32Gen { f }
    }

    fn vec_ty(&self, n: usize) -> T {
        let v = self.f.t.vf();
        let r = self.f.regs(n);
        quote! { [#v; #r] }
    }

    /// The op functions, the step body, and the helper items.
    pub fn render(mut self) -> (Vec<T>, T) {
        let mut body = Body::default();
        let mut vals: HashMap<Buffer, Val> = HashMap::new();
        if self.f.table {
            self.render_table(&mut body, &mut vals);
        }
        let (start, ops) = self.f.ops();
        let mut i = 0;
        while i < ops.len() {
            // A matvec whose result is only added to the residual: the residual seeds the
            // accumulators, saving the add at the end of the chain.
            if let (Op::MatVec { weight, input, out }, Some(&Op::Add { input: added, .. })) =
                (ops[i], ops.get(i + 1))
                && added == out
                && vals[&input].scale.is_none()
                && !reduce_rows(
                    self.f.t,
                    weight.dims(&self.f.shape).0,
                    weight.dims(&self.f.shape).1,
                )
            {
                self.render_matvec_add(start + i, (&ops[i], &ops[i + 1]), &mut body, &mut vals);
                i += 2;
                continue;
            }
            self.render_op(start + i, &ops[i], &mut body, &mut vals);
            i += 1;
        }
        let logits = vals[&Buffer::Logits].regs.clone();
        let store: Vec<T> = (0..self.f.regs(self.f.shape.vocab))
            .map(|i| {
                let off = i * self.f.lanes();
                self.f
                    .t
                    .store(quote! { k.logits.as_mut_ptr().add(#off) }, quote! { #logits[#i] })
            })
            .collect();
        body.push(quote! { #(#store)* });
        body.push(quote! { sample(#logits, r, k.inv_temperature) });
        let attrs = self.attrs();
        let exp = ident("exp_v");
        self.f.items.push(exp_fn(self.f.t, true, &attrs, &exp));
        self.f
            .items
            .push(sample_fn(self.f.t, &self.f.shape, &attrs, true, &exp));
        (self.f.items, body.into_tokens())
    }

    fn attrs(&self) -> T {
        self.f.t.fn_attrs(false)
    }

    fn render_table(&mut self, body: &mut Body, vals: &mut HashMap<Buffer, Val>) {
        let (t, attrs) = (self.f.t, self.attrs());
        let bound = self.f.prefix_table(
            body,
            &attrs,
            quote! { f32 },
            |p| t.load(p),
            t.vf(),
            "the reference engine",
        );
        for (b, regs) in bound {
            vals.insert(b, Val { regs, scale: None });
        }
    }

    fn render_op(&mut self, index: usize, op: &Op, body: &mut Body, vals: &mut HashMap<Buffer, Val>) {
        let s = self.f.shape;
        let doc_head = format!("Op {index} of the forward pass, shape {s}: `{op}`.");
        let attrs = self.attrs();
        match *op {
            Op::Embed { out } => {
                let wte = self.f.plan.get(Param::Wte).offset;
                let wpe = self.f.plan.get(Param::Wpe).offset;
                let row = self.f.padded(s.embd);
                let regs: Vec<T> = (0..self.f.regs(s.embd))
                    .map(|i| {
                        let o = i * self.f.lanes();
                        let a = self.f.t.load(quote! { w.add(#wte + tok * #row + #o) });
                        let b = self.f.t.load(quote! { w.add(#wpe + pos * #row + #o) });
                        self.f.t.add(a, b)
                    })
                    .collect();
                let ty = self.vec_ty(s.embd);
                let name = format_ident!("op{:02}_embed", index);
                let doc = format!("{doc_head} Loads one row of each embedding table and adds them.");
                self.f.items.push(quote! {
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
                let r = self.f.regs(n);
                let squares = tree(
                    (0..r)
                        .map(|i| self.f.t.mul(quote! { x[#i] }, quote! { x[#i] }))
                        .collect(),
                    |a, b| self.f.t.add(a, b),
                );
                let hsum = self.f.t.hsum(quote! { sq });
                let pending = x.scale.as_ref().map(|_| quote! { c });
                let factor = rms_factor(&mut Expr, hsum, n, pending);
                let name = format_ident!("op{:02}_rmsnorm_scale", index);
                let regs = x.regs.clone();
                // With a pending factor `c`, the function takes it and returns one factor for both.
                let (what, c_param, c_arg) = match &x.scale {
                    None => ("Returns the normalising factor".to_string(), quote! {}, quote! {}),
                    Some(c) => (
                        "Returns the factor that normalises `c · x` (`c`: the factor `x` already \
                         carries)"
                            .to_string(),
                        quote! { , c: f32 },
                        quote! { , #c },
                    ),
                };
                let doc = format!("{doc_head} {what}; it is applied where the value is materialised.");
                self.f.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(x: #ty #c_param) -> f32 {
                        let sq = #squares;
                        #factor
                    }
                });
                let scale = body.bind("scale", quote! { #name(#regs #c_arg) });
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
                    let n = self.f.regs(s.vocab);
                    let scaled: Vec<T> = (0..n)
                        .map(|i| self.f.t.mul(quote! { #id[#i] }, self.f.t.splat(quote! { #c })))
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
                let regs: Vec<T> = (0..self.f.regs(n))
                    .map(|i| self.f.t.max(quote! { h[#i] }, self.f.t.zero()))
                    .collect();
                let name = format_ident!("op{:02}_relu", index);
                let doc = format!(
                    "{doc_head} A pending RMSNorm factor is positive, so it commutes with ReLU and \
                     stays pending."
                );
                self.f.items.push(quote! {
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
                let regs: Vec<T> = (0..self.f.regs(n))
                    .map(|i| {
                        let base = match b.scale {
                            Some(_) => self.f.t.mul(quote! { into[#i] }, self.f.t.splat(quote! { sb })),
                            None => quote! { into[#i] },
                        };
                        match a.scale {
                            Some(_) => {
                                self.f
                                    .t
                                    .fma(quote! { input[#i] }, self.f.t.splat(quote! { sa }), base)
                            }
                            None => self.f.t.add(quote! { input[#i] }, base),
                        }
                    })
                    .collect();
                let name = format_ident!("op{:02}_residual_add", index);
                let doc = format!("{doc_head} Applies the operands' pending factors.");
                let (ra, rb) = (a.regs.clone(), b.regs.clone());
                let mut params = vec![quote! { into: #ty }, quote! { input: #ty }];
                let mut args = vec![quote! { #rb }, quote! { #ra }];
                if let Some(c) = &b.scale {
                    params.push(quote! { sb: f32 });
                    args.push(quote! { #c });
                }
                if let Some(c) = &a.scale {
                    params.push(quote! { sa: f32 });
                    args.push(quote! { #c });
                }
                self.f.items.push(quote! {
                    #[doc = #doc]
                    #attrs
                    unsafe fn #name(#(#params),*) -> #ty {
                        [#(#regs),*]
                    }
                });
                let id = body.bind(into.name(), quote! { #name(#(#args),*) });
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
                let mut params = Vec::new();
                let mut args = Vec::new();
                let mut scaled = Vec::new();
                for (b, arg, factor) in [(q, "q", "cq"), (k, "k", "ck"), (v, "v", "cv")] {
                    let val = vals[&b].clone();
                    let regs = val.regs;
                    let (arg, factor) = (ident(arg), ident(factor));
                    args.push(quote! { #regs });
                    let ty = self.vec_ty(s.embd);
                    params.push(quote! { #arg: #ty });
                    if let Some(c) = val.scale {
                        args.push(quote! { #c });
                        params.push(quote! { #factor: f32 });
                        scaled.push((arg, factor));
                    }
                }
                self.attention_fn(&name, &doc_head, layer, &params, &scaled);
                let id = body.bind(out.name(), quote! { #name(keys, values, pos, #(#args),*) });
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

    /// Ops `index` and `index + 1`: `out = W · x` then `into += out`, as one matvec whose
    /// accumulators start from the (materialised) residual.
    fn render_matvec_add(
        &mut self,
        index: usize,
        ops: (&Op, &Op),
        body: &mut Body,
        vals: &mut HashMap<Buffer, Val>,
    ) {
        let (&Op::MatVec { weight, input, out }, &Op::Add { into, .. }) = ops else {
            unreachable!("a matvec and its residual add")
        };
        let s = self.f.shape;
        let (rows, cols) = weight.dims(&s);
        let name = format_ident!(
            "op{:02}_{:02}_matvec_residual_{}",
            index,
            index + 1,
            weight.name().replace('.', "_")
        );
        let doc = format!(
            "Ops {index} and {} of the forward pass, shape {s}: `{}` then `{}`. A {rows}×{cols} \
             matrix times a vector, each input broadcast in turn and multiplied by a whole prepared \
             column; the residual seeds the first accumulator of every output register.",
            index + 1,
            ops.0,
            ops.1
        );
        self.matvec_body_fn(&name, &doc, weight, rows, cols, true);
        let x = vals[&input].regs.clone();
        let residual = vals[&into].clone();
        let seed = match residual.scale {
            None => {
                let r = residual.regs;
                quote! { #r }
            }
            Some(c) => {
                let r = residual.regs;
                let regs: Vec<T> = (0..self.f.regs(s.embd))
                    .map(|i| self.f.t.mul(quote! { #r[#i] }, self.f.t.splat(quote! { #c })))
                    .collect();
                quote! { [#(#regs),*] }
            }
        };
        let id = body.bind(into.name(), quote! { #name(w, #x, #seed) });
        vals.remove(&out);
        vals.insert(
            into,
            Val {
                regs: id,
                scale: None,
            },
        );
    }

    fn matvec_fn(&mut self, name: &Ident, doc: &str, weight: Param, rows: usize, cols: usize) {
        self.matvec_body_fn(name, doc, weight, rows, cols, false)
    }

    /// A matvec function; with `seeded`, it takes a third argument that starts the accumulators.
    fn matvec_body_fn(
        &mut self,
        name: &Ident,
        doc: &str,
        weight: Param,
        rows: usize,
        cols: usize,
        seeded: bool,
    ) {
        let t = self.f.t;
        let l = self.f.lanes();
        let placed = self.f.plan.get(weight).clone();
        let rows_pad = match placed.arrangement {
            Arrangement::Columns { rows_pad } => rows_pad,
            Arrangement::Rows { cols_pad } => {
                return self.row_matvec_fn(name, doc, placed.offset, rows, cols, cols_pad);
            }
            Arrangement::ColumnPairs { .. } => unreachable!("fp32 matrices are columns or rows"),
        };
        let in_ty = self.vec_ty(cols);
        let out_ty = self.vec_ty(rows);
        let out_regs = rows_pad / l;
        // Enough independent chains to cover the FMA latency, few enough to fit the registers.
        let chains = 16usize.div_ceil(out_regs).clamp(1, cols);
        let mut body = Body::default();
        // How each input element reaches every lane.
        let bcast = |c: usize| -> T {
            match t {
                Target::Scalar => quote! { x[#c] },
                Target::Neon => {
                    let (reg, lane) = (c / 4, (c % 4) as i32);
                    quote! { x[#reg], #lane }
                }
                Target::Sse | Target::Avx2 | Target::Avx512 => t.splat(quote! { xs[#c] }),
            }
        };
        if matches!(t, Target::Sse | Target::Avx2 | Target::Avx512) {
            let n = self.f.padded(cols);
            let stores: Vec<T> = (0..self.f.regs(cols))
                .map(|i| {
                    let o = i * l;
                    t.store(quote! { xs.as_mut_ptr().add(#o) }, quote! { x[#i] })
                })
                .collect();
            // Through memory, opaque to the optimiser: every broadcast is then a load, not a
            // shuffle competing with the others for the shuffle ports.
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
                    (Target::Neon, true) if seeded && slot == 0 => {
                        let b = bcast(c);
                        quote! { vfmaq_laneq_f32(seed[#o], #wv, #b) }
                    }
                    (_, true) if seeded && slot == 0 => t.fma(bcast(c), wv, quote! { seed[#o] }),
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
        let seed = seeded.then(|| quote! { , seed: #out_ty });
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const f32, x: #in_ty #seed) -> #out_ty {
                #b
                [#(#outs),*]
            }
        });
    }

    /// A matvec as row dot products: each row times the input, lane by lane, then the lanes of
    /// every group of `lanes` rows summed at once by a transpose-and-add tree. For wide matrices
    /// (many more inputs than outputs) this needs far fewer shuffles than broadcasting every input.
    fn row_matvec_fn(
        &mut self,
        name: &Ident,
        doc: &str,
        offset: usize,
        rows: usize,
        cols: usize,
        cols_pad: usize,
    ) {
        let t = self.f.t;
        let l = self.f.lanes();
        let chunks = cols_pad / l;
        let in_ty = self.vec_ty(cols);
        let out_ty = self.vec_ty(rows);
        let mut body = Body::default();
        let (steps, order) = transpose_plan(t);
        let mut outs = Vec::new();
        for group in 0..rows.div_ceil(l) {
            let products: Vec<T> = order
                .iter()
                .map(|&lane| {
                    let row = group * l + lane;
                    if row >= rows {
                        return t.zero();
                    }
                    let chains = if chunks >= 4 { 2 } else { 1 };
                    let mut accs: Vec<Option<T>> = vec![None; chains];
                    for j in 0..chunks {
                        let off = offset + row * cols_pad + j * l;
                        let wv = t.load(quote! { w.add(#off) });
                        let next = match accs[j % chains].take() {
                            None => t.mul(wv, quote! { x[#j] }),
                            Some(a) => t.fma(wv, quote! { x[#j] }, a),
                        };
                        let id = body.bind("p", next);
                        accs[j % chains] = Some(quote! { #id });
                    }
                    let p = body.bind(
                        "row",
                        tree(accs.into_iter().flatten().collect(), |a, b| t.add(a, b)),
                    );
                    quote! { #p }
                })
                .collect();
            let mut level = products;
            for step in &steps {
                let mut next = Vec::new();
                for pair in level.chunks(2) {
                    let (a, b) = (body.bind("ta", pair[0].clone()), body.bind("tb", pair[1].clone()));
                    let (lo, hi) = step(quote! { #a }, quote! { #b });
                    next.push(t.add(lo, hi));
                }
                level = next;
            }
            outs.push(level.pop().expect("one sum"));
        }
        let attrs = self.attrs();
        let b = body.into_tokens();
        let doc = doc.replace(
            "each input broadcast in turn and multiplied by a whole prepared column, several accumulators per output register",
            "row dot products lane by lane, then a transpose-and-add tree that sums every row's lanes at once",
        );
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const f32, x: #in_ty) -> #out_ty {
                #b
                [#(#outs),*]
            }
        });
    }

    /// `params`: the q, k, v arguments and the pending factors of those in `scaled`.
    fn attention_fn(
        &mut self,
        name: &Ident,
        doc_head: &str,
        layer: usize,
        params: &[T],
        scaled: &[(Ident, Ident)],
    ) {
        let t = self.f.t;
        let s = self.f.shape;
        let l = self.f.lanes();
        let (e, hd) = (s.embd, s.head_dim());
        let r = self.f.regs(e);
        let epad = self.f.padded(e);
        let ty = self.vec_ty(e);
        let cache = layer * s.block * epad;
        let inv_sqrt = 1.0f32 / (hd as f32).sqrt();
        let attrs = self.attrs();

        // Materialise q, k, v (their pending factors), scale q by 1/√hd, store k and v.
        let mut pre = Body::default();
        for (b, c) in scaled {
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
        let dispatch = attn::dispatch(
            name,
            s.block,
            quote! { keys.add(#cache) as *const f32, values.add(#cache) as *const f32, q },
            quote! { v },
        );
        let pre = pre.into_tokens();
        let doc = format!(
            "{doc_head} Stores this position's key and value, then dispatches on the position to \
             attention unrolled for that many cached rows."
        );
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            #[allow(clippy::too_many_arguments)]
            unsafe fn #name(keys: *mut f32, values: *mut f32, pos: usize, #(#params),*) -> #ty {
                #pre
                #dispatch
            }
        });

        let ops = LaneOps {
            add: &|a, b| t.add(a, b),
            swap: &|v, d| t.swap(v, d),
            store: &|p, v| t.store(p, v),
            load: &|p| t.load(p),
            scalar_add: &|a, b| quote! { (#a + #b) },
            elem: quote! { f32 },
            zero: quote! { 0.0f32 },
        };
        let score = |body: &mut Body, row: usize| -> Vec<T> {
            // q·K[row] per head, replicated over the head's lanes.
            let prods: Vec<Ident> = (0..r)
                .map(|i| {
                    let o = row * epad + i * l;
                    body.bind("p", t.mul(quote! { q[#i] }, t.load(quote! { kc.add(#o) })))
                })
                .collect();
            attn::reduce_heads(t, &s, body, &prods, &ops)
        };
        let weigh = |body: &mut Body, i: usize, exps: &[Ident]| -> T {
            // 1/Σe is ready long before Σ e·V, so the division leaves the critical path.
            let sum = tree(exps.iter().map(|x| quote! { #x }).collect(), |a, b| t.add(a, b));
            let inv = body.bind("inv", t.div(t.splat(quote! { 1.0f32 }), sum));
            // Σ e_t·V[t] in up to four independent chains.
            let chains = exps.len().min(4);
            let mut accs: Vec<Option<T>> = vec![None; chains];
            for (row, ex) in exps.iter().enumerate() {
                let o = row * epad + i * l;
                let vt = t.load(quote! { vc.add(#o) });
                let slot = row % chains;
                let next = match accs[slot].take() {
                    None => t.mul(quote! { #ex }, vt),
                    Some(acc) => t.fma(quote! { #ex }, vt, acc),
                };
                let acc = body.bind("acc", next);
                accs[slot] = Some(quote! { #acc });
            }
            let acc = tree(accs.into_iter().flatten().collect(), |a, b| t.add(a, b));
            t.mul(acc, quote! { #inv })
        };
        let doc = |pos: usize| {
            let n = pos + 1;
            format!(
                "Attention of layer {layer} over {n} cached position{} (0..={pos}): per head a \
                 max-subtracted softmax of q·K[t] (q already scaled by 1/√{hd}) and the weighted sum \
                 of V[t], every head's score in its own lanes.",
                if n == 1 { "" } else { "s" }
            )
        };
        self.f.items.extend(attn::unrolled(&attn::Unrolled {
            t,
            shape: s,
            name,
            attrs: &attrs,
            key_elem: quote! { f32 },
            ty,
            score: &score,
            weigh: &weigh,
            doc: &doc,
        }));
    }
}

/// Whether a `rows × cols` matvec is rendered as row dot products and a transpose-and-add tree
/// (x86, where broadcasting each of many inputs costs more than reducing few outputs) rather than
/// by broadcasting inputs.
fn reduce_rows(t: Target, rows: usize, cols: usize) -> bool {
    matches!(t, Target::Avx2 | Target::Avx512) && cols >= 4 * rows
}

type Step = Box<dyn Fn(T, T) -> (T, T)>;

/// The transpose-and-add tree of a target: each step takes pairs of vectors to the two halves
/// whose sum halves the number of vectors, and the final lane `i` holds the sum of the vector
/// fed in position `order[i]`. The order is found by following lane contents through the steps.
fn transpose_plan(t: Target) -> (Vec<Step>, Vec<usize>) {
    let l = t.lanes();
    // Lane-content models of the shuffles, on vectors of source ids.
    let unpack_ps = |a: &[usize], b: &[usize], hi: bool| -> Vec<usize> {
        let o = if hi { 2 } else { 0 };
        (0..l)
            .map(|i| {
                let g = i / 4 * 4;
                let k = i % 4;
                if k % 2 == 0 {
                    a[g + o + k / 2]
                } else {
                    b[g + o + k / 2]
                }
            })
            .collect()
    };
    let unpack_pd = |a: &[usize], b: &[usize], hi: bool| -> Vec<usize> {
        let o = if hi { 2 } else { 0 };
        (0..l)
            .map(|i| {
                let g = i / 4 * 4;
                let k = i % 4;
                if k < 2 { a[g + o + k] } else { b[g + o + k - 2] }
            })
            .collect()
    };
    let groups = |a: &[usize], b: &[usize], sel: [usize; 4]| -> Vec<usize> {
        (0..l)
            .map(|i| {
                let (g, k) = (i / 4, i % 4);
                let src = if g < 2 { a } else { b };
                src[sel[g] * 4 + k]
            })
            .collect()
    };
    let halves = |a: &[usize], b: &[usize], hi: bool| -> Vec<usize> {
        let o = if hi { 4 } else { 0 };
        (0..l)
            .map(|i| if i < 4 { a[o + i] } else { b[o + i - 4] })
            .collect()
    };
    type Model<'a> = Box<dyn Fn(&[usize], &[usize]) -> (Vec<usize>, Vec<usize>) + 'a>;
    let (models, steps): (Vec<Model<'_>>, Vec<Step>) = match t {
        Target::Avx512 => (
            vec![
                Box::new(move |a, b| (unpack_ps(a, b, false), unpack_ps(a, b, true))),
                Box::new(move |a, b| (unpack_pd(a, b, false), unpack_pd(a, b, true))),
                Box::new(move |a, b| (groups(a, b, [0, 2, 0, 2]), groups(a, b, [1, 3, 1, 3]))),
                Box::new(move |a, b| (groups(a, b, [0, 2, 0, 2]), groups(a, b, [1, 3, 1, 3]))),
            ],
            vec![
                Box::new(|a, b| {
                    (
                        quote! { _mm512_unpacklo_ps(#a, #b) },
                        quote! { _mm512_unpackhi_ps(#a, #b) },
                    )
                }),
                Box::new(|a, b| {
                    (
                        quote! { _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(#a), _mm512_castps_pd(#b))) },
                        quote! { _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(#a), _mm512_castps_pd(#b))) },
                    )
                }),
                Box::new(|a, b| {
                    (
                        quote! { _mm512_shuffle_f32x4(#a, #b, 0x88) },
                        quote! { _mm512_shuffle_f32x4(#a, #b, 0xDD) },
                    )
                }),
                Box::new(|a, b| {
                    (
                        quote! { _mm512_shuffle_f32x4(#a, #b, 0x88) },
                        quote! { _mm512_shuffle_f32x4(#a, #b, 0xDD) },
                    )
                }),
            ],
        ),
        Target::Avx2 => (
            vec![
                Box::new(move |a, b| (unpack_ps(a, b, false), unpack_ps(a, b, true))),
                Box::new(move |a, b| (unpack_pd(a, b, false), unpack_pd(a, b, true))),
                Box::new(move |a, b| (halves(a, b, false), halves(a, b, true))),
            ],
            vec![
                Box::new(|a, b| {
                    (
                        quote! { _mm256_unpacklo_ps(#a, #b) },
                        quote! { _mm256_unpackhi_ps(#a, #b) },
                    )
                }),
                Box::new(|a, b| {
                    (
                        quote! { _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(#a), _mm256_castps_pd(#b))) },
                        quote! { _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(#a), _mm256_castps_pd(#b))) },
                    )
                }),
                Box::new(|a, b| {
                    (
                        quote! { _mm256_permute2f128_ps(#a, #b, 0x20) },
                        quote! { _mm256_permute2f128_ps(#a, #b, 0x31) },
                    )
                }),
            ],
        ),
        _ => unreachable!("row matvecs are generated for x86 only"),
    };
    // Follow the ids: vector k starts with id k in every lane.
    let mut level: Vec<Vec<usize>> = (0..l).map(|k| vec![k; l]).collect();
    for model in &models {
        level = level
            .chunks(2)
            .map(|pair| {
                let (lo, hi) = model(&pair[0], &pair[1]);
                assert_eq!(lo, hi, "both halves of a step hold the same sums");
                lo
            })
            .collect();
    }
    let last = &level[0];
    // `last[i]` is the input whose lanes ended in lane i; feed row i there.
    let mut order = vec![0; l];
    for (lane, &input) in last.iter().enumerate() {
        order[input] = lane;
    }
    (steps, order)
}

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
    quote! {
        /// `e^x` per lane: a 16-entry table of `2^(j/16)` in a register, a cubic for the rest.
        #attrs
        unsafe fn #name(x: __m512) -> __m512 {
            let x = _mm512_max_ps(x, _mm512_set1_ps(#min));
            let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(#k)), 0x08);
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(#neg_hi), x);
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(#neg_lo), r);
            let j = _mm512_cvtps_epi32(n);
            let table = _mm512_setr_ps(#(#table),*);
            // vpermps reads the low four bits of each index: j mod 16.
            let t = _mm512_permutexvar_ps(j, table);
            // vscalefps multiplies by 2^floor(e): floor(n / 16) = j >> 4, n / 16 being exact.
            let e = _mm512_mul_ps(n, _mm512_set1_ps(0.0625));
            let p = _mm512_fmadd_ps(_mm512_set1_ps(#c3), r, _mm512_set1_ps(#c2));
            let p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            let p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            _mm512_scalef_ps(_mm512_mul_ps(t, p), e)
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
            Target::Avx512 => quote! { _mm512_scalef_ps(#p, #n) },
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
