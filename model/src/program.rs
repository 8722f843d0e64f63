//! The forward pass for one token, as an ordered list of ops over named buffers.
//!
//! Every backend renders this list: the reference engine interprets it, the code generators
//! turn each op into code. Nothing else in the project restates the forward pass.

use crate::groups::Group;
use crate::{Layout, Param, Shape};
use std::fmt;

/// Epsilon inside every RMSNorm: `x · (mean(x²) + RMS_EPS)^-½`.
pub const RMS_EPS: f64 = 1e-5;

/// The named activation buffers of one token step. Their lengths follow from the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// The residual stream, `embd`.
    X,
    /// The normalised residual fed to a block, `embd`.
    Xn,
    /// Attention query, `embd`.
    Q,
    /// Attention key of this position, `embd`.
    K,
    /// Attention value of this position, `embd`.
    V,
    /// Concatenated head outputs, `embd`.
    Att,
    /// Output of a projection before the residual add, `embd`.
    Proj,
    /// MLP hidden activations, `mlp`.
    Hidden,
    /// The output: one logit per token id, `vocab`.
    Logits,
}

impl Buffer {
    /// Every buffer, in declaration order ([`Buffer::index`] is the position here).
    pub const ALL: [Buffer; 9] = [
        Buffer::X,
        Buffer::Xn,
        Buffer::Q,
        Buffer::K,
        Buffer::V,
        Buffer::Att,
        Buffer::Proj,
        Buffer::Hidden,
        Buffer::Logits,
    ];

    /// A dense index `0..Buffer::ALL.len()`, for renderers that keep buffers in an array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Number of elements for a shape.
    pub fn len(self, shape: &Shape) -> usize {
        match self {
            Buffer::X | Buffer::Xn | Buffer::Q | Buffer::K | Buffer::V | Buffer::Att | Buffer::Proj => {
                shape.embd
            }
            Buffer::Hidden => shape.mlp,
            Buffer::Logits => shape.vocab,
        }
    }

    /// Short lowercase name used in generated code and listings.
    pub fn name(self) -> &'static str {
        match self {
            Buffer::X => "x",
            Buffer::Xn => "xn",
            Buffer::Q => "q",
            Buffer::K => "k",
            Buffer::V => "v",
            Buffer::Att => "att",
            Buffer::Proj => "proj",
            Buffer::Hidden => "hidden",
            Buffer::Logits => "logits",
        }
    }
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of the forward pass. Inputs of a step are the token id `tok` and the position `pos`;
/// the KV cache of every layer persists between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `out = wte[tok] + wpe[pos]`.
    Embed { out: Buffer },
    /// `out = input · (mean(input²) + RMS_EPS)^-½`, no gain; `out` may equal `input`.
    RmsNorm { input: Buffer, out: Buffer },
    /// `out = W · input` with `W` row-major `[out][in]`; `out` never equals `input`.
    MatVec {
        weight: Param,
        input: Buffer,
        out: Buffer,
    },
    /// Stores `k` and `v` at `pos` in the layer's cache, then for each head `h` (channels
    /// `h·hd .. h·hd + hd`): `s_t = q_h·K[t]_h / √hd` for `t ≤ pos`, `p = softmax(s)`
    /// (max-subtracted), `out_h = Σ_t p_t V[t]_h`.
    Attention {
        layer: usize,
        q: Buffer,
        k: Buffer,
        v: Buffer,
        out: Buffer,
    },
    /// `into += input` (the residual connection).
    Add { input: Buffer, into: Buffer },
    /// `buf = max(buf, 0)`.
    Relu { buf: Buffer },
    /// `logits = lm_head · input`: the last op, producing [`Buffer::Logits`].
    Logits { input: Buffer },
}

impl Op {
    /// The weight matrix this op multiplies by, if any.
    pub fn weight(&self) -> Option<Param> {
        match *self {
            Op::MatVec { weight, .. } => Some(weight),
            Op::Logits { .. } => Some(Param::LmHead),
            Op::Embed { .. }
            | Op::RmsNorm { .. }
            | Op::Attention { .. }
            | Op::Add { .. }
            | Op::Relu { .. } => None,
        }
    }

    /// The buffer this op writes.
    pub fn output(&self) -> Buffer {
        match *self {
            Op::Embed { out }
            | Op::RmsNorm { out, .. }
            | Op::MatVec { out, .. }
            | Op::Attention { out, .. } => out,
            Op::Add { into, .. } => into,
            Op::Relu { buf } => buf,
            Op::Logits { .. } => Buffer::Logits,
        }
    }

    /// The buffers this op reads.
    pub fn inputs(&self) -> Vec<Buffer> {
        match *self {
            Op::Embed { .. } => vec![],
            Op::RmsNorm { input, .. } | Op::MatVec { input, .. } | Op::Logits { input } => {
                vec![input]
            }
            Op::Attention { q, k, v, .. } => vec![q, k, v],
            Op::Add { input, into } => vec![input, into],
            Op::Relu { buf } => vec![buf],
        }
    }
}

impl fmt::Display for Op {
    /// A one-line formula, as used in listings and the doc comments of generated code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Embed { out } => write!(f, "{out} = wte[tok] + wpe[pos]"),
            Op::RmsNorm { input, out } => write!(f, "{out} = rmsnorm({input})"),
            Op::MatVec { weight, input, out } => write!(f, "{out} = {weight} · {input}"),
            Op::Attention { layer, q, k, v, out } => write!(
                f,
                "{out} = attention(layer{layer}: {q}; cache[pos] = ({k}, {v}); positions 0..=pos)"
            ),
            Op::Add { input, into } => write!(f, "{into} = {into} + {input}"),
            Op::Relu { buf } => write!(f, "{buf} = relu({buf})"),
            Op::Logits { input } => write!(f, "logits = lm_head · {input}"),
        }
    }
}

/// See [`Program::history_free_prefix`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryFreePrefix {
    /// Number of leading ops.
    pub ops: usize,
    /// Buffers computed by the prefix that the rest of the program reads, in first-read order.
    pub live: Vec<Buffer>,
}

/// The forward pass of a shape: the op list every backend renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    shape: Shape,
    ops: Vec<Op>,
    pub(crate) groups: Vec<Group>,
}

impl Program {
    /// microGPT's forward pass for one token:
    ///
    /// ```text
    /// x = rmsnorm(wte[tok] + wpe[pos])
    /// per layer: xn = rmsnorm(x); q,k,v = Wq·xn, Wk·xn, Wv·xn; att = attention(q, k, v)
    ///            x += Wo·att; xn = rmsnorm(x); x += Wfc2·relu(Wfc1·xn)
    /// logits = lm_head·x
    /// ```
    pub fn forward(shape: Shape) -> Program {
        use Buffer::*;
        let mut ops = vec![Op::Embed { out: X }, Op::RmsNorm { input: X, out: X }];
        for layer in 0..shape.layers {
            ops.extend([
                Op::RmsNorm { input: X, out: Xn },
                Op::MatVec {
                    weight: Param::Wq(layer),
                    input: Xn,
                    out: Q,
                },
                Op::MatVec {
                    weight: Param::Wk(layer),
                    input: Xn,
                    out: K,
                },
                Op::MatVec {
                    weight: Param::Wv(layer),
                    input: Xn,
                    out: V,
                },
                Op::Attention {
                    layer,
                    q: Q,
                    k: K,
                    v: V,
                    out: Att,
                },
                Op::MatVec {
                    weight: Param::Wo(layer),
                    input: Att,
                    out: Proj,
                },
                Op::Add { input: Proj, into: X },
                Op::RmsNorm { input: X, out: Xn },
                Op::MatVec {
                    weight: Param::Fc1(layer),
                    input: Xn,
                    out: Hidden,
                },
                Op::Relu { buf: Hidden },
                Op::MatVec {
                    weight: Param::Fc2(layer),
                    input: Hidden,
                    out: Proj,
                },
                Op::Add { input: Proj, into: X },
            ]);
        }
        ops.push(Op::Logits { input: X });
        let groups = crate::groups::find(&Layout::new(shape), &ops);
        Program { shape, ops, groups }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The ops in execution order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Buffers the program touches, in first-use order.
    pub fn buffers(&self) -> Vec<Buffer> {
        let mut seen = Vec::new();
        for op in &self.ops {
            for b in op.inputs().into_iter().chain([op.output()]) {
                if !seen.contains(&b) {
                    seen.push(b);
                }
            }
        }
        seen
    }

    /// Multiply-accumulates with weights per token: the sum of every matrix-vector product.
    pub fn weight_macs(&self) -> usize {
        self.ops
            .iter()
            .filter_map(Op::weight)
            .map(|p| {
                let (rows, cols) = p.dims(&self.shape);
                rows * cols
            })
            .sum()
    }

    /// The longest prefix of ops whose results depend only on `(tok, pos)`: every op before the
    /// first attention (which reads the cache of earlier positions). A renderer that knows the
    /// weights may evaluate it for every `(tok, pos)` ahead of time and start each step from a
    /// table row holding the prefix's live buffers.
    pub fn history_free_prefix(&self) -> HistoryFreePrefix {
        let ops = self
            .ops
            .iter()
            .position(|op| matches!(op, Op::Attention { .. }))
            .unwrap_or(self.ops.len());
        // Live: read by a later op before any later op writes it.
        let mut live = Vec::new();
        let mut written = Vec::new();
        for op in &self.ops[ops..] {
            for b in op.inputs() {
                if !written.contains(&b) && !live.contains(&b) {
                    live.push(b);
                }
            }
            written.push(op.output());
        }
        HistoryFreePrefix { ops, live }
    }

    /// A numbered listing, one op per line.
    pub fn listing(&self) -> String {
        let mut out = format!("forward pass, shape {}\n", self.shape);
        for (i, op) in self.ops.iter().enumerate() {
            out.push_str(&format!("{i:3}  {op}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_program_macs_match_shape() {
        let p = Program::forward(Shape::DEFAULT);
        assert_eq!(p.weight_macs(), 3504);
        assert_eq!(p.ops().len(), 2 + 12 + 1);
        for s in [
            Shape::new(27, 16, 32, 4, 2, 128).unwrap(),
            Shape::new(5, 3, 6, 3, 4, 7).unwrap(),
        ] {
            assert_eq!(Program::forward(s).weight_macs(), s.weight_macs());
        }
    }

    /// Every op's operands have the sizes its weight expects, and every weight exists.
    #[test]
    fn ops_are_consistent_with_the_layout() {
        let shape = Shape::new(11, 5, 12, 3, 3, 20).unwrap();
        let p = Program::forward(shape);
        let layout = Layout::new(shape);
        for op in p.ops() {
            match *op {
                Op::MatVec { weight, input, out } => {
                    let t = layout.find(weight).expect("weight exists");
                    assert_eq!(t.cols, input.len(&shape), "{op}");
                    assert_eq!(t.rows, out.len(&shape), "{op}");
                    assert_ne!(input, out);
                }
                Op::Logits { input } => assert_eq!(input.len(&shape), shape.embd),
                Op::Attention { layer, .. } => assert!(layer < shape.layers),
                Op::Add { input, into } => assert_eq!(input.len(&shape), into.len(&shape)),
                Op::Embed { .. } | Op::RmsNorm { .. } | Op::Relu { .. } => {}
            }
        }
        assert_eq!(p.ops().last().map(Op::output), Some(Buffer::Logits));
        // Every weight is used exactly once, except the embeddings, used by `Embed`.
        let used: Vec<_> = p.ops().iter().filter_map(Op::weight).collect();
        assert_eq!(used.len(), layout.tensors().len() - 2);
    }

    #[test]
    fn history_free_prefix_ends_at_the_first_attention() {
        let p = Program::forward(Shape::DEFAULT);
        let prefix = p.history_free_prefix();
        assert_eq!(prefix.ops, 6, "embed, 2 norms, q, k, v");
        assert!(matches!(p.ops()[prefix.ops], Op::Attention { .. }));
        assert_eq!(prefix.live, [Buffer::Q, Buffer::K, Buffer::V, Buffer::X]);
        let two = Program::forward(Shape::new(27, 16, 32, 4, 2, 128).unwrap());
        assert_eq!(two.history_free_prefix().ops, 6);
    }

    #[test]
    fn listing_reads_like_the_model() {
        let text = Program::forward(Shape::DEFAULT).listing();
        assert!(text.contains("x = wte[tok] + wpe[pos]"));
        assert!(text.contains("q = layer0.attn_wq · xn"));
        assert!(text.contains("hidden = relu(hidden)"));
        assert!(text.contains("logits = lm_head · x"));
    }
}
