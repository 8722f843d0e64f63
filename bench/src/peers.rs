//! The framework row (cargo feature `peers`): the model run the way a framework user would write
//! it, with candle's CPU tensors, so the table shows what framework overhead costs at this size
//! (the comparison's NumPy and MLX rows play that part).
//!
//! The engine interprets the same op list as the reference, one candle operation (or a few) per
//! op: `[1, in] × [in, out]` matmuls, a growing key/value cache per layer, attention as batched
//! matmuls over heads. It is an [`Engine`], so the sampler and generation loops are the shared
//! ones and it is checked against the fp32 reference like every other row.
//!
//! candle picks its thread count on every matmul (counting the CPUs again unless
//! `RAYON_NUM_THREADS` is set), which costs more than this model's arithmetic. The bench
//! therefore sets `RAYON_NUM_THREADS=1` when it is unset ([`pin_threads`]), and the row says which
//! value it ran with.

use candle_core::{D, DType, Device, Tensor};
use microgpt_model::{Buffer, Layout, Op, Param, Program, RMS_EPS, Shape};
use microgpt_runtime::variant::{Engine, EngineVariant};
use microgpt_runtime::{Precision, Settings, VariantInfo, VariantSpec};
use microgpt_weights::Weights;
use std::collections::HashMap;

/// The environment variable candle's CPU matmul reads its thread count from.
pub const THREADS_VAR: &str = "RAYON_NUM_THREADS";

/// Sets `RAYON_NUM_THREADS=1` unless it is already set; returns the value in force.
///
/// # Safety
/// Changes the process environment: call it before any other thread starts (first thing in
/// `main`), as [`std::env::set_var`] requires.
pub unsafe fn pin_threads() -> String {
    match std::env::var(THREADS_VAR) {
        Ok(v) => v,
        Err(_) => {
            // SAFETY: the caller guarantees no other thread reads or writes the environment.
            unsafe { std::env::set_var(THREADS_VAR, "1") };
            "1".into()
        }
    }
}

/// The variants of this module.
pub fn variants() -> Vec<VariantSpec> {
    vec![VariantSpec::new(
        "candle-f32",
        "candle",
        Precision::F32,
        |w, s| {
            Ok(Box::new(
                candle_variant(w, s).map_err(|e| format!("candle: {e}"))?,
            ))
        },
    )]
}

/// The candle engine as a bench variant.
pub fn candle_variant(
    weights: &Weights,
    settings: &Settings,
) -> candle_core::Result<EngineVariant<CandleEngine>> {
    let mut info = VariantInfo::new("candle-f32", "candle", "candle cpu", Precision::F32);
    let threads = std::env::var(THREADS_VAR).unwrap_or_else(|_| "unset".into());
    info.notes.push(format!(
        "candle-core on the CPU, run with {THREADS_VAR}={threads} (unset or 0, candle counts the \
         CPUs again on every matmul, which costs more than the matmul at this size)"
    ));
    Ok(EngineVariant::new(info, CandleEngine::new(weights)?, settings))
}

/// The op list rendered as candle tensor operations.
pub struct CandleEngine {
    program: Program,
    /// Every weight matrix, transposed to `[in, out]` so that a `[1, in]` row times it is `W·x`;
    /// the embedding tables as they are, `[rows, embd]`.
    params: HashMap<Param, Tensor>,
    /// The step's buffers, each `[1, len]`.
    buffers: Vec<Option<Tensor>>,
    /// Per layer: the keys and values of positions `0..=pos`, each `[t, embd]`.
    keys: Vec<Option<Tensor>>,
    values: Vec<Option<Tensor>>,
    logits: Vec<f32>,
}

impl CandleEngine {
    pub fn new(weights: &Weights) -> candle_core::Result<CandleEngine> {
        let shape = *weights.shape();
        let layout = Layout::new(shape);
        let mut params = HashMap::new();
        for t in layout.tensors() {
            let m = Tensor::from_slice(&weights.data()[t.range()], (t.rows, t.cols), &Device::Cpu)?;
            let m = match t.param {
                Param::Wte | Param::Wpe => m,
                _ => m.t()?.contiguous()?,
            };
            params.insert(t.param, m);
        }
        Ok(CandleEngine {
            program: Program::forward(shape),
            params,
            buffers: vec![None; Buffer::ALL.len()],
            keys: vec![None; shape.layers],
            values: vec![None; shape.layers],
            logits: vec![0.0; shape.vocab],
        })
    }

    fn get(&self, b: Buffer) -> candle_core::Result<&Tensor> {
        self.buffers[b.index()]
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg(format!("{b} read before written")))
    }

    /// One forward pass; the logits land in `self.logits`.
    fn forward(&mut self, tok: usize, pos: usize) -> candle_core::Result<()> {
        let shape = *self.program.shape();
        let (heads, hd) = (shape.heads, shape.head_dim());
        for i in 0..self.program.ops().len() {
            let op = self.program.ops()[i];
            let value = match op {
                Op::Embed { .. } => {
                    let e = (self.params[&Param::Wte].get(tok)? + self.params[&Param::Wpe].get(pos)?)?;
                    e.unsqueeze(0)?
                }
                Op::RmsNorm { input, .. } => {
                    let x = self.get(input)?;
                    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                    x.broadcast_div(&(ms + RMS_EPS)?.sqrt()?)?
                }
                Op::MatVec { weight, input, .. } => self.get(input)?.matmul(&self.params[&weight])?,
                Op::Logits { input } => self.get(input)?.matmul(&self.params[&Param::LmHead])?,
                Op::Attention { layer, q, k, v, .. } => {
                    let append = |cache: &Option<Tensor>, row: &Tensor| match cache {
                        Some(c) if pos > 0 => Tensor::cat(&[&c.narrow(0, 0, pos)?, row], 0),
                        _ => Ok(row.clone()),
                    };
                    let keys = append(&self.keys[layer], self.get(k)?)?;
                    let values = append(&self.values[layer], self.get(v)?)?;
                    let t = pos + 1;
                    // [heads, 1, hd] · [heads, hd, t] → [heads, 1, t]
                    let qh = self.get(q)?.reshape((heads, 1, hd))?;
                    let kh = keys.reshape((t, heads, hd))?.permute((1, 2, 0))?.contiguous()?;
                    let vh = values.reshape((t, heads, hd))?.transpose(0, 1)?.contiguous()?;
                    let scores = (qh.matmul(&kh)? / (hd as f64).sqrt())?;
                    let max = scores.max_keepdim(D::Minus1)?;
                    let e = scores.broadcast_sub(&max)?.exp()?;
                    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
                    self.keys[layer] = Some(keys);
                    self.values[layer] = Some(values);
                    p.matmul(&vh)?.reshape((1, shape.embd))?
                }
                Op::Add { input, into } => (self.get(into)? + self.get(input)?)?,
                Op::Relu { buf } => self.get(buf)?.relu()?,
            };
            self.buffers[op.output().index()] = Some(value);
        }
        let logits = self
            .get(Buffer::Logits)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.logits.copy_from_slice(&logits);
        Ok(())
    }
}

impl Engine for CandleEngine {
    fn engine_shape(&self) -> Shape {
        *self.program.shape()
    }

    fn forward_into(&mut self, tok: usize, pos: usize, logits: &mut [f32]) {
        // The variant's inputs are in range (the stream and the checks guarantee it), and a CPU
        // tensor operation on correctly shaped operands does not fail: an error here is a bug.
        if let Err(e) = self.forward(tok, pos) {
            panic!("candle forward pass failed at token {tok}, position {pos}: {e}");
        }
        logits.copy_from_slice(&self.logits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_runtime::Reference;
    use microgpt_weights::default_weights;

    #[test]
    fn matches_the_reference_over_a_whole_sequence() {
        for weights in [
            default_weights(),
            Weights::random(Shape::parse("embd=32,layers=2,mlp=128").unwrap(), 7, 0.3),
        ] {
            let shape = *weights.shape();
            let mut candle = CandleEngine::new(&weights).unwrap();
            let mut reference = Reference::<f32>::new(&weights);
            let mut logits = vec![0.0; shape.vocab];
            for pos in 0..shape.block {
                let tok = (pos * 7 + 3) % shape.vocab;
                candle.forward_into(tok, pos, &mut logits);
                let want = reference.forward(tok, pos);
                for (a, b) in logits.iter().zip(want) {
                    assert!((a - b).abs() < 1e-4, "pos {pos}: candle {a} vs reference {b}");
                }
            }
        }
    }
}
