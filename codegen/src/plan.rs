//! Where each weight lives in a kernel's prepared buffer, and how it is laid out there.

use microgpt_model::{Layout, Op, Param, Program, Shape};

/// How a tensor is rearranged at prepare time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrangement {
    /// Row-major, rows padded to `cols_pad` (embedding tables: one row per token or position;
    /// matvecs that multiply whole rows and reduce across lanes).
    Rows { cols_pad: usize },
    /// Column-major, columns padded to `rows_pad` (matvecs that broadcast one input at a time).
    Columns { rows_pad: usize },
    /// Pairs of columns interleaved, padded to `rows_pad` rows (i16 pairwise multiply-adds).
    ColumnPairs { rows_pad: usize },
}

/// One tensor in the prepared buffer.
#[derive(Clone, Debug)]
pub struct Placed {
    pub param: Param,
    pub rows: usize,
    pub cols: usize,
    /// Offset of the tensor in the canonical flat vector.
    pub source: usize,
    pub arrangement: Arrangement,
    /// Offset in the prepared buffer, in elements.
    pub offset: usize,
    pub len: usize,
}

/// Every tensor a kernel reads, in the order placed.
#[derive(Clone, Debug, Default)]
pub struct WeightPlan {
    pub placed: Vec<Placed>,
    pub total: usize,
}

impl WeightPlan {
    /// Places the tensors the ops `ops` of `program` read: embeddings as padded rows, matrices
    /// as `matrix(param)` says. Offsets are aligned to `align` elements.
    pub fn new(
        shape: &Shape,
        ops: &[Op],
        align: usize,
        rows_pad: impl Fn(usize) -> usize,
        matrix: impl Fn(usize, usize) -> Arrangement,
    ) -> WeightPlan {
        let layout = Layout::new(*shape);
        let mut plan = WeightPlan::default();
        let mut place = |param: Param, arrangement: Arrangement| {
            let t = layout.tensor(param);
            let len = match arrangement {
                Arrangement::Rows { cols_pad } => t.rows * cols_pad,
                Arrangement::Columns { rows_pad } => t.cols * rows_pad,
                Arrangement::ColumnPairs { rows_pad } => t.cols.div_ceil(2) * rows_pad * 2,
            };
            plan.placed.push(Placed {
                param,
                rows: t.rows,
                cols: t.cols,
                source: t.offset,
                arrangement,
                offset: plan.total,
                len,
            });
            plan.total += len.next_multiple_of(align);
        };
        for op in ops {
            match *op {
                Op::Embed { .. } => {
                    let cols_pad = rows_pad(shape.embd);
                    place(Param::Wte, Arrangement::Rows { cols_pad });
                    place(Param::Wpe, Arrangement::Rows { cols_pad });
                }
                Op::MatVec { weight, .. } => {
                    let (rows, cols) = weight.dims(shape);
                    place(weight, matrix(rows, cols));
                }
                Op::Logits { .. } => place(Param::LmHead, matrix(shape.vocab, shape.embd)),
                Op::RmsNorm { .. } | Op::Attention { .. } | Op::Add { .. } | Op::Relu { .. } => {}
            }
        }
        plan
    }

    pub fn get(&self, param: Param) -> &Placed {
        self.placed
            .iter()
            .find(|p| p.param == param)
            .unwrap_or_else(|| panic!("{param} was not placed"))
    }
}

/// The ops a kernel renders, and whether a table replaces the history-free prefix.
pub struct Ops<'a> {
    /// Ops before `start` are precomputed in a table (0: no table).
    pub start: usize,
    pub program: &'a Program,
}

impl Ops<'_> {
    pub fn rendered(&self) -> &[Op] {
        &self.program.ops()[self.start..]
    }
}

/// Whether attention heads line up with registers of `lanes` lanes, so that in-register swaps
/// reduce each head (otherwise the kernels reduce through memory).
pub fn heads_aligned(shape: &Shape, lanes: usize) -> bool {
    lanes == 1 || (shape.embd.is_multiple_of(lanes) && shape.head_dim().is_power_of_two())
}
