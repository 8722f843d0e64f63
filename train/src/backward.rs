//! Backpropagation through the op list.
//!
//! The forward pass is the reference engine itself, observed by a [`Tape`] that records the
//! input each op needs for its gradient. The backward pass walks the same ops in reverse,
//! position by position from the last, so that when a position's attention is reached every
//! later position has already added its share to that position's key and value gradients.

use microgpt_model::{Buffer, Layout, Op, Param, Program};
use microgpt_runtime::Real;
use microgpt_runtime::reference::math::{self, Heads};
use microgpt_runtime::reference::{Buffers, Hook, Reference};

/// The buffer whose value before the op its gradient needs (`None`: nothing to record).
fn recorded_input(op: &Op) -> Option<Buffer> {
    match *op {
        Op::RmsNorm { input, .. } | Op::MatVec { input, .. } | Op::Logits { input } => Some(input),
        Op::Attention { q, .. } => Some(q),
        Op::Relu { buf } => Some(buf),
        Op::Embed { .. } | Op::Add { .. } => None,
    }
}

/// The recorded inputs of every op at every position of one sequence.
#[derive(Debug, Default)]
pub struct Tape<F> {
    data: Vec<F>,
    spans: Vec<(usize, usize)>,
    ops: usize,
}

impl<F: Real> Tape<F> {
    fn clear(&mut self, ops: usize) {
        self.data.clear();
        self.spans.clear();
        self.ops = ops;
    }

    fn get(&self, pos: usize, op: usize) -> &[F] {
        let (start, len) = self.spans[pos * self.ops + op];
        &self.data[start..start + len]
    }
}

impl<F: Real> Hook<F> for Tape<F> {
    fn before(&mut self, _: usize, op: &Op, buffers: &Buffers<F>) {
        let start = self.data.len();
        if let Some(b) = recorded_input(op) {
            self.data.extend_from_slice(&buffers[b.index()]);
        }
        self.spans.push((start, self.data.len() - start));
    }
}

/// Scratch for one worker: the tape, buffer gradients, cache gradients, saved logit gradients.
#[derive(Debug)]
pub struct Backprop<F: Real> {
    program: Program,
    layout: Layout,
    tape: Tape<F>,
    dbuf: Buffers<F>,
    dkeys: Vec<F>,
    dvalues: Vec<F>,
    dlogits: Vec<F>,
    probs: Vec<F>,
    dprobs: Vec<F>,
    tmp: Vec<F>,
}

impl<F: Real> Backprop<F> {
    pub fn new(engine: &Reference<F>) -> Backprop<F> {
        let s = *engine.shape();
        let cache = s.layers * s.block * s.embd;
        Backprop {
            program: Program::forward(s),
            layout: Layout::new(s),
            tape: Tape::default(),
            dbuf: Buffer::ALL.map(|b| vec![F::ZERO; b.len(&s)]),
            dkeys: vec![F::ZERO; cache],
            dvalues: vec![F::ZERO; cache],
            dlogits: Vec::new(),
            probs: vec![F::ZERO; s.block.max(s.vocab)],
            dprobs: vec![F::ZERO; s.block],
            tmp: Vec::new(),
        }
    }

    /// Forward and backward over one sequence: `inputs[p]` is fed at position `p` and
    /// `targets[p]` is the token to predict. Adds `scale · ∂(Σ_p −ln P(target_p))/∂w` to `grads`
    /// and returns the summed loss Σ_p −ln P(target_p).
    pub fn sequence(
        &mut self,
        engine: &mut Reference<F>,
        inputs: &[usize],
        targets: &[usize],
        scale: F,
        grads: &mut [F],
    ) -> f64 {
        let shape = *engine.shape();
        let n = inputs.len();
        assert!(
            n == targets.len() && n <= shape.block,
            "sequence longer than the block"
        );
        let vocab = shape.vocab;
        assert_eq!(shape, *self.program.shape(), "engine and scratch shapes differ");
        self.tape.clear(self.program.ops().len());
        self.dlogits.clear();
        let mut loss = 0.0;
        for (pos, (&tok, &target)) in inputs.iter().zip(targets).enumerate() {
            let logits = engine.forward_with(tok, pos, &mut self.tape);
            let p = &mut self.probs[..vocab];
            p.copy_from_slice(logits);
            math::softmax(p);
            loss -= p[target].to_f64().ln();
            p[target] -= F::ONE;
            self.dlogits.extend(p.iter().map(|&g| g * scale));
        }
        self.backward(engine, inputs, grads);
        loss
    }

    fn backward(&mut self, engine: &Reference<F>, inputs: &[usize], grads: &mut [F]) {
        let shape = *engine.shape();
        let Backprop {
            program,
            layout,
            tape,
            dbuf,
            dkeys,
            dvalues,
            dlogits,
            probs,
            dprobs,
            tmp,
        } = self;
        let (e, vocab) = (shape.embd, shape.vocab);
        let geo = Heads {
            heads: shape.heads,
            head_dim: shape.head_dim(),
        };
        dkeys.fill(F::ZERO);
        dvalues.fill(F::ZERO);
        for pos in (0..inputs.len()).rev() {
            for d in dbuf.iter_mut() {
                d.fill(F::ZERO);
            }
            dbuf[Buffer::Logits.index()].copy_from_slice(&dlogits[pos * vocab..][..vocab]);
            for (index, op) in program.ops().iter().enumerate().rev() {
                let saved = tape.get(pos, index);
                match *op {
                    Op::Logits { input } => {
                        let t = layout.tensor(Param::LmHead);
                        let (dy, dx) = split(dbuf, Buffer::Logits, input);
                        matvec_backward(&engine.weights()[t.range()], saved, dy, &mut grads[t.range()], dx);
                        dy.fill(F::ZERO);
                    }
                    Op::MatVec { weight, input, out } => {
                        let t = layout.tensor(weight);
                        let (dy, dx) = split(dbuf, out, input);
                        matvec_backward(&engine.weights()[t.range()], saved, dy, &mut grads[t.range()], dx);
                        dy.fill(F::ZERO);
                    }
                    Op::Add { input, into } => {
                        let (dy, dx) = split(dbuf, into, input);
                        for (a, &b) in dx.iter_mut().zip(dy.iter()) {
                            *a += b;
                        }
                    }
                    Op::Relu { buf } => {
                        for (d, &x) in dbuf[buf.index()].iter_mut().zip(saved) {
                            if x <= F::ZERO {
                                *d = F::ZERO;
                            }
                        }
                    }
                    Op::RmsNorm { input, out } => {
                        let s = math::rms_scale(saved);
                        tmp.clear();
                        tmp.extend_from_slice(&dbuf[out.index()]);
                        let dy = &tmp[..];
                        let mut dot = F::ZERO;
                        for (&x, &g) in saved.iter().zip(dy) {
                            dot += x * g;
                        }
                        let k = s * s * s * dot / F::from_f64(saved.len() as f64);
                        if input == out {
                            dbuf[input.index()].fill(F::ZERO);
                        } else {
                            dbuf[out.index()].fill(F::ZERO);
                        }
                        for ((d, &x), &g) in dbuf[input.index()].iter_mut().zip(saved).zip(dy) {
                            *d += s * g - k * x;
                        }
                    }
                    Op::Attention { layer, q, k, v, out } => {
                        let n = shape.block * e;
                        let (keys, values) = engine.cache(layer);
                        let dk = &mut dkeys[layer * n..][..n];
                        let dv = &mut dvalues[layer * n..][..n];
                        let (dout, dq) = split(dbuf, out, q);
                        let scratch = (&mut probs[..], &mut dprobs[..]);
                        attention_backward(geo, saved, keys, values, pos, dout, dq, dk, dv, scratch);
                        dout.fill(F::ZERO);
                        // Every later position has contributed by now: this position's key and
                        // value gradients are complete.
                        for (d, &g) in dbuf[k.index()].iter_mut().zip(&dk[pos * e..][..e]) {
                            *d += g;
                        }
                        for (d, &g) in dbuf[v.index()].iter_mut().zip(&dv[pos * e..][..e]) {
                            *d += g;
                        }
                    }
                    Op::Embed { out } => {
                        let wte = layout.tensor(Param::Wte).offset + inputs[pos] * e;
                        let wpe = layout.tensor(Param::Wpe).offset + pos * e;
                        for (i, &g) in dbuf[out.index()].iter().enumerate() {
                            grads[wte + i] += g;
                            grads[wpe + i] += g;
                        }
                        dbuf[out.index()].fill(F::ZERO);
                    }
                }
            }
        }
    }
}

/// The gradient of a written buffer and the gradient of a distinct read buffer.
fn split<F>(dbuf: &mut Buffers<F>, written: Buffer, read: Buffer) -> (&mut [F], &mut [F]) {
    let (w, r) = (written.index(), read.index());
    assert_ne!(w, r);
    if w < r {
        let (lo, hi) = dbuf.split_at_mut(r);
        (&mut lo[w], &mut hi[0])
    } else {
        let (lo, hi) = dbuf.split_at_mut(w);
        (&mut hi[0], &mut lo[r])
    }
}

/// `y = W·x`: `dW += dy ⊗ x`, `dx += Wᵀ·dy`.
fn matvec_backward<F: Real>(w: &[F], x: &[F], dy: &[F], dw: &mut [F], dx: &mut [F]) {
    let cols = x.len();
    for (r, &g) in dy.iter().enumerate() {
        let row = &w[r * cols..][..cols];
        let drow = &mut dw[r * cols..][..cols];
        for c in 0..cols {
            drow[c] += g * x[c];
            dx[c] += g * row[c];
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_backward<F: Real>(
    geo: Heads,
    q: &[F],
    keys: &[F],
    values: &[F],
    pos: usize,
    dout: &[F],
    dq: &mut [F],
    dkeys: &mut [F],
    dvalues: &mut [F],
    (probs, dps): (&mut [F], &mut [F]),
) {
    let (hd, e) = (geo.head_dim, geo.embd());
    let sqrt_hd = F::from_f64(hd as f64).sqrt();
    for h in 0..geo.heads {
        let ch = h * hd..h * hd + hd;
        let p = &mut probs[..=pos];
        for (t, s) in p.iter_mut().enumerate() {
            let mut dot = F::ZERO;
            for j in ch.clone() {
                dot += q[j] * keys[t * e + j];
            }
            *s = dot / sqrt_hd;
        }
        math::softmax(p);
        // dp_t = dout_h · V[t]_h; dV[t]_h += p_t dout_h; ds_t = p_t (dp_t − Σ p dp).
        let mut sum_pdp = F::ZERO;
        for t in 0..=pos {
            let mut dp = F::ZERO;
            for j in ch.clone() {
                dp += dout[j] * values[t * e + j];
                dvalues[t * e + j] += p[t] * dout[j];
            }
            dps[t] = dp;
            sum_pdp += p[t] * dp;
        }
        for t in 0..=pos {
            let ds = p[t] * (dps[t] - sum_pdp) / sqrt_hd;
            for j in ch.clone() {
                dq[j] += ds * keys[t * e + j];
                dkeys[t * e + j] += ds * q[j];
            }
        }
    }
}
