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
use crate::frame::{AttentionDims, Frame};
use crate::sample::{exp_fn, sample_fn};
use crate::target::{Shuffle, Target};
use microgpt_model::numerics::rms_factor;
use microgpt_model::plan::Arrangement;
use microgpt_model::{Buffer, Fusion, Op, Param, Program};
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

impl Val {
    fn new(regs: Ident, scale: Option<Ident>) -> Val {
        Val { regs, scale }
    }
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
            if let Some(group) = self.f.program.group(Fusion::MatVecAdd, start + i)
                && let Op::MatVec { weight, input, .. } = ops[i]
                && vals[&input].scale.is_none()
                && !self.reduces_rows(weight)
            {
                self.render_matvec_add(group.start, (&ops[i], &ops[i + 1]), &mut body, &mut vals);
                i += group.len();
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

    /// Whether `weight`'s matvec reduces rows (see [`reduce_rows`]) rather than accumulating columns.
    fn reduces_rows(&self, weight: Param) -> bool {
        let (rows, cols) = weight.dims(&self.f.shape);
        reduce_rows(self.f.t, rows, cols)
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

    /// One op: its function among the items, its call in the step body, and the value it makes.
    fn render_op(&mut self, index: usize, op: &Op, body: &mut Body, vals: &mut HashMap<Buffer, Val>) {
        let head = format!("Op {index} of the forward pass, shape {}: `{op}`.", self.f.shape);
        let name = |suffix: &str| format_ident!("op{:02}_{}", index, suffix);
        let (made, val) = match *op {
            Op::Embed { out } => (out, self.embed(name("embed"), &head, out, body)),
            Op::RmsNorm { input, out } => (
                out,
                self.rmsnorm(name("rmsnorm_scale"), &head, &vals[&input], body),
            ),
            Op::MatVec { weight, input, out } => {
                let name = name(&format!("matvec_{}", weight.name().replace('.', "_")));
                (out, self.matvec(name, &head, weight, out, &vals[&input], body))
            }
            Op::Logits { input } => (
                Buffer::Logits,
                self.logits(name("logits"), &head, &vals[&input], body),
            ),
            Op::Relu { buf } => (buf, self.relu(name("relu"), &head, buf, &vals[&buf], body)),
            Op::Add { input, into } => {
                let name = name("residual_add");
                (
                    into,
                    self.add(name, &head, into, &vals[&input], &vals[&into], body),
                )
            }
            Op::Attention { layer, q, k, v, out } => {
                let qkv = [q, k, v].map(|b| vals[&b].clone());
                (
                    out,
                    self.attention(name("attention"), &head, layer, out, qkv, body),
                )
            }
        };
        vals.insert(made, val);
    }

    /// `x = wte[tok] + wpe[pos]`: one row of each embedding table, added.
    fn embed(&mut self, name: Ident, head: &str, out: Buffer, body: &mut Body) -> Val {
        let s = self.f.shape;
        let attrs = self.attrs();
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
        let doc = format!("{head} Loads one row of each embedding table and adds them.");
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(w: *const f32, tok: usize, pos: usize) -> #ty {
                [#(#regs),*]
            }
        });
        Val::new(body.bind(out.name(), quote! { #name(w, tok, pos) }), None)
    }

    /// RMSNorm as a deferred factor: the function returns it, the registers stay unscaled.
    fn rmsnorm(&mut self, name: Ident, head: &str, x: &Val, body: &mut Body) -> Val {
        let n = self.f.shape.embd;
        let attrs = self.attrs();
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
        let regs = x.regs.clone();
        // With a pending factor `c`, the function takes it and returns one factor for both.
        let (what, c_param, c_arg) = match &x.scale {
            None => ("Returns the normalising factor".to_string(), quote! {}, quote! {}),
            Some(c) => (
                "Returns the factor that normalises `c · x` (`c`: the factor `x` already carries)"
                    .to_string(),
                quote! { , c: f32 },
                quote! { , #c },
            ),
        };
        let doc = format!("{head} {what}; it is applied where the value is materialised.");
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(x: #ty #c_param) -> f32 {
                let sq = #squares;
                #factor
            }
        });
        let scale = body.bind("scale", quote! { #name(#regs #c_arg) });
        Val::new(x.regs.clone(), Some(scale))
    }

    /// `out = W · x`; a pending factor of `x` stays pending on `out`.
    fn matvec(
        &mut self,
        name: Ident,
        head: &str,
        weight: Param,
        out: Buffer,
        x: &Val,
        body: &mut Body,
    ) -> Val {
        let (rows, cols) = weight.dims(&self.f.shape);
        let method = if self.reduces_rows(weight) {
            "row dot products lane by lane, then a transpose-and-add tree that sums every row's \
             lanes at once"
        } else {
            "each input broadcast in turn and multiplied by a whole prepared column, several \
             accumulators per output register"
        };
        let doc = format!("{head} A {rows}×{cols} matrix times a vector: {method}.");
        self.matvec_fn(&name, &doc, weight, rows, cols);
        let regs = x.regs.clone();
        Val::new(body.bind(out.name(), quote! { #name(w, #regs) }), x.scale.clone())
    }

    /// `logits = lm_head · x`, the pending factor applied to the result.
    fn logits(&mut self, name: Ident, head: &str, x: &Val, body: &mut Body) -> Val {
        let s = self.f.shape;
        let doc = format!("{head} The output head, a matvec like the others.");
        self.matvec_fn(&name, &doc, Param::LmHead, s.vocab, s.embd);
        let regs = x.regs.clone();
        let mut id = body.bind("logits", quote! { #name(w, #regs) });
        if let Some(c) = &x.scale {
            let n = self.f.regs(s.vocab);
            let scaled: Vec<T> = (0..n)
                .map(|i| self.f.t.mul(quote! { #id[#i] }, self.f.t.splat(quote! { #c })))
                .collect();
            id = body.bind("logits", quote! { [#(#scaled),*] });
        }
        Val::new(id, None)
    }

    /// `buf = relu(buf)`; a pending factor is positive, so it commutes and stays pending.
    fn relu(&mut self, name: Ident, head: &str, buf: Buffer, x: &Val, body: &mut Body) -> Val {
        let n = buf.len(&self.f.shape);
        let attrs = self.attrs();
        let ty = self.vec_ty(n);
        let regs: Vec<T> = (0..self.f.regs(n))
            .map(|i| self.f.t.max(quote! { h[#i] }, self.f.t.zero()))
            .collect();
        let doc = format!(
            "{head} A pending RMSNorm factor is positive, so it commutes with ReLU and stays pending."
        );
        self.f.items.push(quote! {
            #[doc = #doc]
            #attrs
            unsafe fn #name(h: #ty) -> #ty {
                [#(#regs),*]
            }
        });
        let r = x.regs.clone();
        Val::new(body.bind(buf.name(), quote! { #name(#r) }), x.scale.clone())
    }

    /// `into += input`, both operands' pending factors applied.
    fn add(&mut self, name: Ident, head: &str, into: Buffer, a: &Val, b: &Val, body: &mut Body) -> Val {
        let n = into.len(&self.f.shape);
        let attrs = self.attrs();
        let ty = self.vec_ty(n);
        let t = self.f.t;
        let regs: Vec<T> = (0..self.f.regs(n))
            .map(|i| {
                let base = match b.scale {
                    Some(_) => t.mul(quote! { into[#i] }, t.splat(quote! { sb })),
                    None => quote! { into[#i] },
                };
                match a.scale {
                    Some(_) => t.fma(quote! { input[#i] }, t.splat(quote! { sa }), base),
                    None => t.add(quote! { input[#i] }, base),
                }
            })
            .collect();
        let doc = format!("{head} Applies the operands' pending factors.");
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
        Val::new(body.bind(into.name(), quote! { #name(#(#args),*) }), None)
    }

    /// Attention over the cache of `layer`; q, k and v passed with their pending factors.
    fn attention(
        &mut self,
        name: Ident,
        head: &str,
        layer: usize,
        out: Buffer,
        qkv: [Val; 3],
        body: &mut Body,
    ) -> Val {
        let mut params = Vec::new();
        let mut args = Vec::new();
        let mut scaled = Vec::new();
        for (val, (arg, factor)) in qkv.into_iter().zip([("q", "cq"), ("k", "ck"), ("v", "cv")]) {
            let regs = val.regs;
            let (arg, factor) = (ident(arg), ident(factor));
            args.push(quote! { #regs });
            let ty = self.vec_ty(self.f.shape.embd);
            params.push(quote! { #arg: #ty });
            if let Some(c) = val.scale {
                args.push(quote! { #c });
                params.push(quote! { #factor: f32 });
                scaled.push((arg, factor));
            }
        }
        self.attention_fn(&name, head, layer, &params, &scaled);
        Val::new(
            body.bind(out.name(), quote! { #name(keys, values, pos, #(#args),*) }),
            None,
        )
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
        vals.insert(into, Val::new(id, None));
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
                        t.fma_by_lane(Some(quote! { seed[#o] }), wv, bcast(c))
                    }
                    (_, true) if seeded && slot == 0 => t.fma(bcast(c), wv, quote! { seed[#o] }),
                    (Target::Neon, true) => t.fma_by_lane(None, wv, bcast(c)),
                    (Target::Neon, false) => t.fma_by_lane(Some(quote! { #acc }), wv, bcast(c)),
                    (_, true) => t.mul(bcast(c), wv),
                    (_, false) => t.fma(bcast(c), wv, quote! { #acc }),
                };
                body.accumulate(acc, first, expr);
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
            for step in steps {
                let mut next = Vec::new();
                for pair in level.chunks(2) {
                    let (a, b) = (body.bind("ta", pair[0].clone()), body.bind("tb", pair[1].clone()));
                    let (lo, hi) = t.shuffle(*step, quote! { #a }, quote! { #b });
                    next.push(t.add(lo, hi));
                }
                level = next;
            }
            outs.push(level.pop().expect("one sum"));
        }
        let attrs = self.attrs();
        let b = body.into_tokens();
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
        let AttentionDims { l, e, hd, r, epad } = self.f.attention_dims();
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
        self.attention_positions_fns(name, layer);
    }

    /// The attention functions the entry dispatches to, one per count of cached positions.
    fn attention_positions_fns(&mut self, name: &Ident, layer: usize) {
        let t = self.f.t;
        let s = self.f.shape;
        let AttentionDims { l, e, hd, r, epad } = self.f.attention_dims();
        let ty = self.vec_ty(e);
        let attrs = self.attrs();
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

/// The transpose-and-add tree of a target: each step takes pairs of vectors to the two halves
/// whose sum halves the number of vectors, and the final lane `i` holds the sum of the vector
/// fed in position `order[i]`. The order is found by following lane contents through the steps.
fn transpose_plan(t: Target) -> (&'static [Shuffle], Vec<usize>) {
    let (l, steps) = (t.lanes(), t.transpose_shuffles());
    // Follow the ids: vector k starts with id k in every lane.
    let mut level: Vec<Vec<usize>> = (0..l).map(|k| vec![k; l]).collect();
    for step in steps {
        level = level
            .chunks(2)
            .map(|pair| {
                let (lo, hi) = step.lanes(&pair[0], &pair[1]);
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
