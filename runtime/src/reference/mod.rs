//! The reference engine: a plain scalar interpreter of the model's op list, with a KV cache.
//! It is the oracle every other variant is checked against.

pub mod math;
mod q412;

pub use q412::Q412Reference;

use crate::Real;
use math::Heads;
use microgpt_model::{Buffer, Layout, Op, Param, Program, Shape};
use microgpt_weights::Weights;

/// Every activation buffer of a step, indexed by [`Buffer::index`].
pub type Buffers<F> = [Vec<F>; Buffer::ALL.len()];

/// Observes the interpreter before each op (the trainer records its tape this way).
pub trait Hook<F> {
    fn before(&mut self, index: usize, op: &Op, buffers: &Buffers<F>);
}

/// The no-op hook of plain inference.
impl<F> Hook<F> for () {
    #[inline(always)]
    fn before(&mut self, _: usize, _: &Op, _: &Buffers<F>) {}
}

/// The scalar reference in `F` (f32 is the oracle of fp32 variants; f64 checks f32).
#[derive(Clone, Debug)]
pub struct Reference<F: Real> {
    program: Program,
    layout: Layout,
    weights: Vec<F>,
    buffers: Buffers<F>,
    /// `[layer][position][embd]`.
    keys: Vec<F>,
    values: Vec<F>,
    probs: Vec<F>,
}

impl<F: Real> Reference<F> {
    pub fn new(weights: &Weights) -> Reference<F> {
        let shape = *weights.shape();
        let cache = shape.layers * shape.block * shape.embd;
        Reference {
            program: Program::forward(shape),
            layout: Layout::new(shape),
            weights: weights.data().iter().map(|&w| F::from_f32(w)).collect(),
            buffers: Buffer::ALL.map(|b| vec![F::ZERO; b.len(&shape)]),
            keys: vec![F::ZERO; cache],
            values: vec![F::ZERO; cache],
            probs: vec![F::ZERO; shape.block],
        }
    }

    pub fn shape(&self) -> &Shape {
        self.program.shape()
    }

    /// Replaces the parameters (same shape), e.g. after an optimiser step.
    pub fn set_weights(&mut self, data: &[f32]) {
        assert_eq!(data.len(), self.weights.len(), "parameter count");
        for (w, &v) in self.weights.iter_mut().zip(data) {
            *w = F::from_f32(v);
        }
    }

    pub fn weights(&self) -> &[F] {
        &self.weights
    }

    /// The parameters in `F`, for callers that perturb them (gradient checks).
    pub fn weights_mut(&mut self) -> &mut [F] {
        &mut self.weights
    }

    pub fn weight(&self, param: Param) -> &[F] {
        &self.weights[self.layout.tensor(param).range()]
    }

    /// The layer's cached keys and values, `[position][embd]` each.
    pub fn cache(&self, layer: usize) -> (&[F], &[F]) {
        let n = self.shape().block * self.shape().embd;
        (&self.keys[layer * n..][..n], &self.values[layer * n..][..n])
    }

    pub fn buffer(&self, b: Buffer) -> &[F] {
        &self.buffers[b.index()]
    }

    /// Runs the forward pass for `tok` at `pos` (the cache holds positions `0..pos` of this
    /// sequence) and returns the logits.
    ///
    /// # Panics
    /// If `tok >= vocab` or `pos >= block`.
    pub fn forward(&mut self, tok: usize, pos: usize) -> &[F] {
        self.forward_with(tok, pos, &mut ())
    }

    /// [`Reference::forward`], calling `hook` before every op.
    pub fn forward_with<H: Hook<F>>(&mut self, tok: usize, pos: usize, hook: &mut H) -> &[F] {
        self.run_ops(tok, pos, self.program.ops().len(), hook);
        &self.buffers[Buffer::Logits.index()]
    }

    /// Runs the first `count` ops of the step for `tok` at `pos`, calling `hook` before each;
    /// the buffers then hold their values at that point (see
    /// [`microgpt_model::Program::history_free_prefix`]).
    pub fn run_ops<H: Hook<F>>(&mut self, tok: usize, pos: usize, count: usize, hook: &mut H) {
        let shape = *self.shape();
        assert_step_input(&shape, tok, pos);
        let geo = Heads {
            heads: shape.heads,
            head_dim: shape.head_dim(),
        };
        let e = shape.embd;
        for (index, op) in self.program.ops()[..count].iter().enumerate() {
            hook.before(index, op, &self.buffers);
            match *op {
                Op::Embed { out } => {
                    let wte = &self.weights[self.layout.tensor(Param::Wte).range()][tok * e..][..e];
                    let wpe = &self.weights[self.layout.tensor(Param::Wpe).range()][pos * e..][..e];
                    for ((o, &a), &b) in self.buffers[out.index()].iter_mut().zip(wte).zip(wpe) {
                        *o = a + b;
                    }
                }
                Op::RmsNorm { input, out } => {
                    let scale = math::rms_scale(&self.buffers[input.index()]);
                    if input == out {
                        for v in self.buffers[out.index()].iter_mut() {
                            *v *= scale;
                        }
                    } else {
                        let (x, y) = pair(&mut self.buffers, input, out);
                        for (o, &v) in y.iter_mut().zip(x) {
                            *o = v * scale;
                        }
                    }
                }
                Op::MatVec { weight, input, out } => {
                    let w = &self.weights[self.layout.tensor(weight).range()];
                    let (x, y) = pair(&mut self.buffers, input, out);
                    math::matvec(w, x, y);
                }
                Op::Logits { input } => {
                    let w = &self.weights[self.layout.tensor(Param::LmHead).range()];
                    let (x, y) = pair(&mut self.buffers, input, Buffer::Logits);
                    math::matvec(w, x, y);
                }
                Op::Attention { layer, q, k, v, out } => {
                    let n = shape.block * e;
                    let keys = &mut self.keys[layer * n..][..n];
                    let values = &mut self.values[layer * n..][..n];
                    keys[pos * e..][..e].copy_from_slice(&self.buffers[k.index()]);
                    values[pos * e..][..e].copy_from_slice(&self.buffers[v.index()]);
                    let (qv, o) = pair(&mut self.buffers, q, out);
                    math::attention(geo, qv, keys, values, pos, &mut self.probs, o);
                }
                Op::Add { input, into } => {
                    let (x, y) = pair(&mut self.buffers, input, into);
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o += v;
                    }
                }
                Op::Relu { buf } => {
                    for v in self.buffers[buf.index()].iter_mut() {
                        *v = v.max(F::ZERO);
                    }
                }
            }
        }
    }
}

/// Panics unless `tok` is a token and `pos` a position of `shape` (both references' steps).
pub(crate) fn assert_step_input(shape: &Shape, tok: usize, pos: usize) {
    assert!(tok < shape.vocab, "token {tok} out of range 0..{}", shape.vocab);
    assert!(
        pos < shape.block,
        "position {pos} out of range 0..{}",
        shape.block
    );
}

/// Two distinct buffers: one to read, one to write.
pub fn pair<T>(buffers: &mut [Vec<T>], read: Buffer, write: Buffer) -> (&[T], &mut [T]) {
    let (r, w) = (read.index(), write.index());
    assert_ne!(r, w, "an op reads and writes {read}");
    if r < w {
        let (lo, hi) = buffers.split_at_mut(w);
        (&lo[r], &mut hi[0])
    } else {
        let (lo, hi) = buffers.split_at_mut(r);
        (&hi[0], &mut lo[w])
    }
}
