//! The scalar primitives of the forward pass, written once and shared by the reference engine,
//! the Q4.12 reference (its float parts) and the trainer. Every sum runs left to right.

use crate::Real;
use microgpt_model::RMS_EPS;

/// `(mean(x²) + eps)^-½`.
pub fn rms_scale<F: Real>(x: &[F]) -> F {
    let mut ms = F::ZERO;
    for &v in x {
        ms += v * v;
    }
    F::ONE / (ms / F::from_f64(x.len() as f64) + F::from_f64(RMS_EPS)).sqrt()
}

/// `y = W · x`, `W` row-major `[y.len()][x.len()]`.
pub fn matvec<F: Real>(w: &[F], x: &[F], y: &mut [F]) {
    let cols = x.len();
    debug_assert_eq!(w.len(), cols * y.len());
    for (out, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
        let mut acc = F::ZERO;
        for (&a, &b) in row.iter().zip(x) {
            acc += a * b;
        }
        *out = acc;
    }
}

/// Max-subtracted softmax in place; the denominator is summed left to right.
pub fn softmax<F: Real>(v: &mut [F]) {
    let mut m = v[0];
    for &x in &v[1..] {
        m = m.max(x);
    }
    let mut sum = F::ZERO;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x = *x / sum;
    }
}

/// The geometry of one layer's attention: `heads` groups of `head_dim` channels over cached rows
/// of `embd = heads · head_dim` values.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn embd(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Causal attention of `q` over cached `keys`/`values` rows `0..=pos` (`probs` is scratch of at
/// least `pos + 1`): per head, `p = softmax(q_h·K[t]_h / √hd)`, `out_h = Σ_t p_t V[t]_h`.
pub fn attention<F: Real>(
    geo: Heads,
    q: &[F],
    keys: &[F],
    values: &[F],
    pos: usize,
    probs: &mut [F],
    out: &mut [F],
) {
    let (hd, e) = (geo.head_dim, geo.embd());
    let sqrt_hd = F::from_f64(hd as f64).sqrt();
    for h in 0..geo.heads {
        let ch = h * hd..h * hd + hd;
        let probs = &mut probs[..=pos];
        for (t, s) in probs.iter_mut().enumerate() {
            let k = &keys[t * e..][ch.clone()];
            let mut dot = F::ZERO;
            for (&a, &b) in q[ch.clone()].iter().zip(k) {
                dot += a * b;
            }
            *s = dot / sqrt_hd;
        }
        softmax(probs);
        for j in ch.clone() {
            let mut acc = F::ZERO;
            for (t, &p) in probs.iter().enumerate() {
                acc += p * values[t * e + j];
            }
            out[j] = acc;
        }
    }
}
