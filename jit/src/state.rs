//! The state block a compiled step reads and writes: prepared weights, KV cache, scratch and
//! logits, at offsets fixed when the code is generated.

use crate::cl::LANES;
use microgpt_model::plan::{Arrangement, WeightPlan};
use microgpt_model::{Precision, Program, Shape};

/// Byte offsets of every region (each 64-byte aligned).
#[derive(Clone, Debug)]
pub struct StateLayout {
    pub shape: Shape,
    pub precision: Precision,
    /// Element offsets of the weights (elements of 4 bytes for fp32, 2 for Q4.12), from byte 0.
    pub plan: WeightPlan,
    pub keys: usize,
    pub values: usize,
    /// Per-position scores (or exponentials) of one attention.
    pub scratch: usize,
    /// A matvec's input, spilled so each element can be broadcast straight from memory.
    pub xbuf: usize,
    pub logits: usize,
    pub total: usize,
}

fn align(n: usize) -> usize {
    n.next_multiple_of(64)
}

/// `n` padded to whole vectors.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(LANES)
}

impl StateLayout {
    pub fn new(program: &Program, precision: Precision) -> StateLayout {
        let shape = *program.shape();
        let plan = WeightPlan::new(&shape, program.ops(), 16, padded, |rows, _| {
            let rows_pad = padded(rows);
            precision.pick(
                Arrangement::Columns { rows_pad },
                Arrangement::ColumnPairs { rows_pad },
            )
        });
        let elem = precision.pick(4, 2);
        let cache = shape.layers * shape.block * padded(shape.embd) * 4;
        let keys = align(plan.total * elem);
        let values = keys + align(cache);
        let scratch = values + align(cache);
        let xbuf = scratch + align(shape.block * padded(shape.embd) * 4);
        let logits = xbuf + align(padded(shape.embd.max(shape.mlp)) * 4);
        let total = logits + align(padded(shape.vocab) * 4);
        StateLayout {
            shape,
            precision,
            plan,
            keys,
            values,
            scratch,
            xbuf,
            logits,
            total,
        }
    }

    /// Byte offset of a placed tensor.
    pub fn weight(&self, param: microgpt_model::Param) -> usize {
        let elem = self.precision.pick(4, 2);
        self.plan.get(param).offset * elem
    }
}
