//! The scalar Q4.12 reference: the op list in fixed-point arithmetic (docs/spec.md#q412-operations).
//! Its integer results are what every Q4.12 kernel must reproduce bit for bit.

use super::Buffers;
use microgpt_model::numerics::{
    Eval, exp_q412, q412_real, q412_rms_scale, q412_rms_value, q412_score, q412_units,
};
use microgpt_model::{Buffer, Layout, Op, Param, Program, Shape};
use microgpt_weights::Weights;

/// Saturates a wide integer to i16.
#[inline]
pub fn sat16(v: i32) -> i16 {
    v.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

/// Rounds half to even and saturates (`as` saturates floats).
#[inline]
pub fn round_sat16(v: f32) -> i16 {
    v.round_ties_even() as i16
}

/// `acc = Σ w·x` in wrapping i32, then `acc >> 12` (floor), saturated.
#[inline]
pub fn q412_dot(w: &[i16], x: &[i16]) -> i16 {
    let mut acc = 0i32;
    for (&a, &b) in w.iter().zip(x) {
        acc = acc.wrapping_add(a as i32 * b as i32);
    }
    sat16(acc >> 12)
}

/// RMSNorm in f32 on Q4.12 input, back to Q4.12.
pub fn q412_rmsnorm(x: &[i16], out: &mut [i16]) {
    let mut ms = 0.0f32;
    for &v in x {
        let f = q412_real(&mut Eval, v as f32);
        ms += f * f;
    }
    let scale = q412_rms_scale(&mut Eval, ms, x.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = round_sat16(q412_rms_value(&mut Eval, q412_real(&mut Eval, v as f32), scale));
    }
}

/// The scalar Q4.12 engine.
#[derive(Clone, Debug)]
pub struct Q412Reference {
    program: Program,
    layout: Layout,
    weights: Vec<i16>,
    buffers: Buffers<i16>,
    keys: Vec<i16>,
    values: Vec<i16>,
    scores: Vec<f32>,
}

impl Q412Reference {
    pub fn new(weights: &Weights) -> Q412Reference {
        let shape = *weights.shape();
        let cache = shape.layers * shape.block * shape.embd;
        Q412Reference {
            program: Program::forward(shape),
            layout: Layout::new(shape),
            weights: weights.quantized(),
            buffers: Buffer::ALL.map(|b| vec![0; b.len(&shape)]),
            keys: vec![0; cache],
            values: vec![0; cache],
            scores: vec![0.0; shape.block],
        }
    }

    pub fn shape(&self) -> &Shape {
        self.program.shape()
    }

    /// The quantised parameters, canonical order.
    pub fn weights(&self) -> &[i16] {
        &self.weights
    }

    pub fn buffer(&self, b: Buffer) -> &[i16] {
        &self.buffers[b.index()]
    }

    /// Runs one step and returns the Q4.12 logits.
    ///
    /// # Panics
    /// If `tok >= vocab` or `pos >= block`.
    pub fn forward(&mut self, tok: usize, pos: usize) -> &[i16] {
        self.run_ops(tok, pos, self.program.ops().len());
        &self.buffers[Buffer::Logits.index()]
    }

    /// Runs the first `count` ops of the step for `tok` at `pos` (see
    /// [`microgpt_model::Program::history_free_prefix`]); the buffers then hold their values
    /// at that point.
    pub fn run_ops(&mut self, tok: usize, pos: usize, count: usize) {
        let shape = *self.shape();
        super::assert_step_input(&shape, tok, pos);
        let (e, hd) = (shape.embd, shape.head_dim());
        for op in &self.program.ops()[..count] {
            match *op {
                Op::Embed { out } => {
                    let wte = &self.weights[self.layout.tensor(Param::Wte).range()][tok * e..][..e];
                    let wpe = &self.weights[self.layout.tensor(Param::Wpe).range()][pos * e..][..e];
                    for ((o, &a), &b) in self.buffers[out.index()].iter_mut().zip(wte).zip(wpe) {
                        *o = a.wrapping_add(b);
                    }
                }
                Op::RmsNorm { input, out } => {
                    let x = self.buffers[input.index()].clone();
                    q412_rmsnorm(&x, &mut self.buffers[out.index()]);
                }
                Op::MatVec { weight, input, out } => {
                    let w = &self.weights[self.layout.tensor(weight).range()];
                    let (x, y) = super::pair(&mut self.buffers, input, out);
                    for (o, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
                        *o = q412_dot(row, x);
                    }
                }
                Op::Logits { input } => {
                    let w = &self.weights[self.layout.tensor(Param::LmHead).range()];
                    let (x, y) = super::pair(&mut self.buffers, input, Buffer::Logits);
                    for (o, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
                        *o = q412_dot(row, x);
                    }
                }
                Op::Attention { layer, q, k, v, out } => {
                    let n = shape.block * e;
                    let keys = &mut self.keys[layer * n..][..n];
                    let values = &mut self.values[layer * n..][..n];
                    keys[pos * e..][..e].copy_from_slice(&self.buffers[k.index()]);
                    values[pos * e..][..e].copy_from_slice(&self.buffers[v.index()]);
                    let (qv, o) = super::pair(&mut self.buffers, q, out);
                    q412_attention(shape.heads, hd, qv, keys, values, pos, &mut self.scores, o);
                }
                Op::Add { input, into } => {
                    let (x, y) = super::pair(&mut self.buffers, input, into);
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = sat16(*o as i32 + v as i32);
                    }
                }
                Op::Relu { buf } => {
                    for v in self.buffers[buf.index()].iter_mut() {
                        *v = (*v).max(0);
                    }
                }
            }
        }
    }

    /// The last logits as real numbers (`l / 4096`).
    pub fn logits_f32(&self) -> Vec<f32> {
        self.buffer(Buffer::Logits)
            .iter()
            .map(|&l| q412_real(&mut Eval, l as f32))
            .collect()
    }
}

/// Max-subtracted softmax in f32 with the Q4.12 datapath's `exp` (sums left to right).
pub fn q412_softmax(v: &mut [f32]) {
    let mut m = v[0];
    for &x in &v[1..] {
        m = m.max(x);
    }
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = exp_q412(*x - m);
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// Attention in f32 on Q4.12 inputs: an i32 dot per cached position, scaled to a
/// real score, an f32 softmax, the weighted sum of `V / 4096`, rounded back to Q4.12.
#[allow(clippy::too_many_arguments)]
pub fn q412_attention(
    heads: usize,
    hd: usize,
    q: &[i16],
    keys: &[i16],
    values: &[i16],
    pos: usize,
    scores: &mut [f32],
    out: &mut [i16],
) {
    let e = heads * hd;
    for h in 0..heads {
        let ch = h * hd..h * hd + hd;
        let scores = &mut scores[..=pos];
        for (t, s) in scores.iter_mut().enumerate() {
            let mut dot = 0i32;
            for (&a, &b) in q[ch.clone()].iter().zip(&keys[t * e..][ch.clone()]) {
                dot = dot.wrapping_add(a as i32 * b as i32);
            }
            *s = q412_score(&mut Eval, dot as f32, hd);
        }
        q412_softmax(scores);
        for j in ch {
            let mut o = 0.0f32;
            for (t, &p) in scores.iter().enumerate() {
                o += p * q412_real(&mut Eval, values[t * e + j] as f32);
            }
            out[j] = round_sat16(q412_units(&mut Eval, o));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives() {
        assert_eq!(sat16(40000), 32767);
        assert_eq!(sat16(-40000), -32768);
        assert_eq!(round_sat16(2.5), 2);
        assert_eq!(round_sat16(-3.5), -4);
        assert_eq!(round_sat16(1e9), 32767);
        // floor, not truncation: -1 * 1 >> 12 = -1
        assert_eq!(q412_dot(&[-1], &[1]), -1);
        assert_eq!(q412_dot(&[4096, 4096], &[4096, -8192]), -4096);
        assert_eq!(q412_dot(&[32767; 2], &[32767; 2]), 32767);
        // The i32 accumulator wraps (so the sum is exact in any order).
        assert_eq!(
            q412_dot(&[32767; 3], &[32767; 3]),
            sat16(3i32.wrapping_mul(32767 * 32767) >> 12)
        );
        let mut out = [0i16; 4];
        q412_rmsnorm(&[4096, 4096, 4096, 4096], &mut out);
        assert_eq!(out, [4096; 4]);
    }
}
