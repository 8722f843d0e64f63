//! Planning: where the kernels' data lives. The weights in the order and scale the kernels read
//! them (the weight plan), the prefix table after them, the KV cache's and the shared memory's
//! sizes.

use microgpt_model::numerics::base2_query_scale;
use microgpt_model::plan::{Arrangement, PrefixRow, WeightPlan};
use microgpt_model::{Op, Param, Program, Shape};
use microgpt_runtime::kernel::layout::prefix_table_f32;
use microgpt_weights::{Weights, folded_f32};

/// The weights in the order and scale the kernels read them (see the module docs).
pub fn arrange(weights: &Weights) -> Vec<f32> {
    weight_plan(weights.shape()).arrange(&folded_f32(weights, None, true))
}

/// The weight plan of every CUDA kernel: neither padding nor alignment, so that every tensor
/// keeps its canonical offset (the offsets the source names), the embeddings as rows and every
/// other matrix as columns, `[in][out]` ([`transposed`]).
pub(crate) fn weight_plan(shape: &Shape) -> WeightPlan {
    let program = Program::forward(*shape);
    WeightPlan::new(
        shape,
        program.ops(),
        1,
        |n| n,
        |rows, _| Arrangement::Columns { rows_pad: rows },
    )
}

/// Floats each of a prefix table row's buffers is padded to (16 bytes: the lanes read them four
/// at a time).
pub(crate) const TABLE_PAD: usize = 4;

/// Where [`device_floats`] puts the prefix table: after `weight_floats` arranged weights, 16-byte
/// aligned.
pub(crate) fn table_offset(weight_floats: usize) -> usize {
    weight_floats.next_multiple_of(TABLE_PAD)
}

/// What the kernels read from global memory: [`arrange`]'s weights, then (at `MG_TABLE`, the
/// next multiple of 4) the prefix table of `mg_step_lanes_table` (rows laid out as
/// [`PrefixRow`] says, padded to 4 floats), evaluated by the fp32 reference, its queries
/// multiplied by [`base2_query_scale`] as `arrange` multiplies the query weights.
pub fn device_floats(weights: &Weights) -> Vec<f32> {
    let shape = weights.shape();
    let row = PrefixRow::new(shape, TABLE_PAD);
    let mut out = arrange(weights);
    out.resize(table_offset(out.len()), 0.0);
    let mut table = prefix_table_f32(weights, TABLE_PAD);
    // The queries the first attention reads (the op right after the prefix).
    let query = match Program::forward(*shape).ops().get(row.ops) {
        Some(&Op::Attention { q, .. }) => row.live.iter().find(|&&(b, _)| b == q),
        _ => None,
    };
    if let Some(&(q, at)) = query {
        let q_scale = base2_query_scale(shape);
        for r in table.chunks_mut(row.len) {
            r[at..at + q.len(shape)].iter_mut().for_each(|v| *v *= q_scale);
        }
    }
    out.extend(table);
    out
}

/// Floats one position adds to a stream's KV cache (a key and a value per layer).
pub(crate) fn kv_position_floats(shape: &Shape) -> usize {
    2 * shape.layers * shape.embd
}

pub(crate) fn transposed(p: Param) -> bool {
    !matches!(p, Param::Wte | Param::Wpe)
}

/// Dynamic shared memory of a block of `warps` warps (bytes): its copy of the weights, then each
/// warp's scratch.
pub(crate) fn block_shared_bytes(shared_weight_floats: usize, warps: usize, scratch_floats: usize) -> usize {
    4 * (shared_weight_floats + warps * scratch_floats)
}
