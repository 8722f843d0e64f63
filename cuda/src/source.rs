//! Source assembly: the shape's constants and the weight and scratch offsets as macros, the
//! device helpers (`device/prelude.cuh`), every op rendered for the warp, lane and thread kernels,
//! then the whole-step and whole-stream kernels (`device/kernels.cuh`).

use crate::lane::lane_step;
use crate::plan::{TABLE_PAD, block_shared_bytes, kv_position_floats, table_offset, transposed};
use crate::thread::{thread_cache_store, thread_mlp, thread_op};
use crate::warp::warp_op;
use crate::{
    CudaSource, HOIST_WEIGHTS_PER_LANE, MAX_WARPS_PER_SM, NVRTC_OPTIONS, SHARED_PER_SM, SHARED_WEIGHTS_LIMIT,
    STREAM_THREADS, STREAM_WARPS_PER_SM, WARPS_PER_BLOCK,
};
use microgpt_model::numerics::{F32Ops, rms_factor};
use microgpt_model::plan::PrefixRow;
use microgpt_model::{Buffer, Fusion, Layout, Param, Program, Shape};
use std::fmt::Write;

/// Device helpers shared by every kernel.
pub(crate) const PRELUDE: &str = include_str!("device/prelude.cuh");

/// The whole-step and whole-stream kernels.
pub(crate) const KERNELS: &str = include_str!("device/kernels.cuh");

/// Renders the CUDA C of `shape`.
pub fn render(shape: &Shape) -> CudaSource {
    let program = Program::forward(*shape);
    let m = Memory::plan(&program);
    let mut s = String::new();
    write_defines(&mut s, &program, &m);
    s.push_str(PRELUDE);
    let op_kernels = write_warp_ops(&mut s, &program);
    write_lane_steps(&mut s, &m);
    write_thread_step(&mut s, &program);
    s.push_str(KERNELS);
    CudaSource {
        shape: *shape,
        text: s,
        weight_floats: m.weight_floats,
        shared_weight_floats: m.shared_weight_floats,
        scratch_floats: m.scratch_floats,
        lane_scratch_floats: m.lane_scratch_floats,
        kv_floats: m.kv_floats,
        kv_shared_positions: m.kv_shared_positions,
        logits_offset: m.scratch[Buffer::Logits.index()].1,
        op_kernels,
    }
}

/// Where a shape's kernels keep what: the weights, the warp scratch, the lane steps' shared
/// buffers, the KV caches (and the lane steps themselves, whose buffers size the scratch).
struct Memory {
    weight_floats: usize,
    shared_weight_floats: usize,
    kv_floats: usize,
    /// The scratch offsets' macros and values.
    scratch: Vec<(String, usize)>,
    scratch_floats: usize,
    lane_scratch_floats: usize,
    warp_blocks_per_sm: usize,
    kv_shared_positions: usize,
    hoist: bool,
    table: PrefixRow,
    lane_body: String,
    table_body: String,
}

impl Memory {
    fn plan(program: &Program) -> Memory {
        let shape = program.shape();
        let (block, vocab) = (shape.block, shape.vocab);
        let kv_floats = block * kv_position_floats(shape);
        let weight_floats = Layout::new(*shape).param_count();
        let shared_weight_floats = if 4 * weight_floats <= SHARED_WEIGHTS_LIMIT {
            weight_floats.next_multiple_of(32)
        } else {
            0
        };

        // Scratch layout of the warp kernels: every buffer, then the KV cache, the attention
        // probabilities and the sampler's vector (each 16-byte aligned).
        let mut scratch = Vec::new();
        let mut at = 0;
        for b in Buffer::ALL {
            scratch.push((format!("MG_S_{}", buffer_name(b).to_uppercase()), at));
            at += b.len(shape).next_multiple_of(4);
        }
        scratch.push(("MG_S_KV".into(), at));
        at += kv_floats.next_multiple_of(4);
        scratch.push(("MG_S_PROBS".into(), at));
        at += (shape.heads * block).next_multiple_of(4);
        scratch.push(("MG_S_DRAW".into(), at));
        at += vocab.next_multiple_of(4);
        let scratch_floats = at.next_multiple_of(32);
        // The lane step's two shared buffers: over the warp step's buffers before the logits
        // where they fit (the lane step keeps those in registers), else after the warp scratch,
        // in a longer scratch of the lane kernels' own.
        let table = PrefixRow::new(shape, TABLE_PAD);
        // The table step runs only with the weights read from global memory
        // (mg_persistent_table), kept in registers where they fit (MG_HOIST): its matvecs read
        // their inputs whole there.
        let hoist = weight_floats <= 32 * HOIST_WEIGHTS_PER_LANE;
        let (lane_body, lane_share) = lane_step(program, None, false);
        let (table_body, table_share) = lane_step(program, Some(&table), hoist);
        let share_floats = lane_share.max(table_share);
        let logits_at = scratch[Buffer::Logits.index()].1;
        let (share_at, lane_scratch_floats) = if 2 * share_floats <= logits_at {
            (0, scratch_floats)
        } else {
            (at, (at + 2 * share_floats).next_multiple_of(32))
        };
        scratch.push(("MG_S_SHARE".into(), share_at));
        scratch.push(("MG_SHARE".into(), share_floats));
        let warp_block_bytes = block_shared_bytes(shared_weight_floats, WARPS_PER_BLOCK, scratch_floats);
        let warp_blocks_per_sm =
            (SHARED_PER_SM / warp_block_bytes).clamp(1, MAX_WARPS_PER_SM / WARPS_PER_BLOCK);
        let stream_block_bytes = SHARED_PER_SM * STREAM_THREADS / (32 * STREAM_WARPS_PER_SM);
        let kv_shared_positions = (stream_block_bytes.saturating_sub(4 * shared_weight_floats)
            / (4 * STREAM_THREADS * kv_position_floats(shape)))
        .min(block);
        Memory {
            weight_floats,
            shared_weight_floats,
            kv_floats,
            scratch,
            scratch_floats,
            lane_scratch_floats,
            warp_blocks_per_sm,
            kv_shared_positions,
            hoist,
            table,
            lane_body,
            table_body,
        }
    }
}

/// The source's head: the shape, the NVRTC options, and every size and offset as a macro.
fn write_defines(w: &mut String, program: &Program, m: &Memory) {
    let shape = program.shape();
    let (e, block, vocab) = (shape.embd, shape.block, shape.vocab);
    let _ = writeln!(
        w,
        "// microGPT, shape vocab={vocab} block={block} embd={e} heads={} layers={} mlp={}:\n\
         // rendered from the model's op list ({} ops). Weights: {} floats, canonical order, every\n\
         // matrix but the embeddings transposed to [in][out].\n\
         // NVRTC options: {} (and --gpu-architecture for the device)\n",
        shape.heads,
        shape.layers,
        shape.mlp,
        program.ops().len(),
        m.weight_floats,
        NVRTC_OPTIONS.join(" ")
    );
    let table_at = table_offset(m.weight_floats);
    for (name, value) in [
        ("MG_VOCAB", vocab),
        ("MG_BLOCK", block),
        ("MG_EMBD", e),
        ("MG_HEADS", shape.heads),
        ("MG_HEAD_DIM", shape.head_dim()),
        ("MG_MLP", shape.mlp),
        ("MG_BOS", shape.bos()),
        ("MG_WEIGHTS", m.weight_floats),
        ("MG_WEIGHTS_SHARED", m.shared_weight_floats),
        ("MG_KV", m.kv_floats),
        ("MG_STREAM_THREADS", STREAM_THREADS),
        ("MG_LAYERS", shape.layers),
        ("MG_KV_SHARED_POSITIONS", m.kv_shared_positions),
        ("MG_SCRATCH", m.scratch_floats),
        ("MG_LANE_SCRATCH", m.lane_scratch_floats),
        ("MG_WARPS_PER_BLOCK", WARPS_PER_BLOCK),
        ("MG_WARP_BLOCKS_PER_SM", m.warp_blocks_per_sm),
        ("MG_HOIST", usize::from(m.hoist)),
        ("MG_TABLE", table_at),
        ("MG_TABLE_ROW", m.table.len),
        ("MG_DEVICE_FLOATS", table_at + vocab * block * m.table.len),
    ] {
        let _ = writeln!(w, "#define {name} {value}");
    }
    for t in Layout::new(*shape).tensors() {
        let stored = if transposed(t.param) {
            ", stored transposed"
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "#define {} {}  // {} x {}{stored}",
            param_macro(t.param),
            t.offset,
            t.rows,
            t.cols
        );
    }
    for (name, value) in &m.scratch {
        let _ = writeln!(w, "#define {name} {value}");
    }
    // RMSNorm's factor for the sum of squares `ss` of embd values, the model's rule.
    let factor = rms_factor(&mut CExpr, "(ss)".to_string(), e, None);
    let _ = writeln!(w, "#define MG_RMS_FACTOR(ss) {factor}");
    w.push('\n');
}

/// Warp ops, one statement per op over scratch `s` and weights `w`: a kernel per op, and the
/// whole step. Returns the op kernels' names.
fn write_warp_ops(w: &mut String, program: &Program) -> Vec<String> {
    let warp_ops: Vec<String> = program
        .ops()
        .iter()
        .map(|op| warp_op(program.shape(), op))
        .collect();
    let mut op_kernels = Vec::new();
    for (i, (op, code)) in program.ops().iter().zip(&warp_ops).enumerate() {
        let name = format!("mg_op_{i}");
        let _ = writeln!(
            w,
            "// op {i}: {op}\nextern \"C\" __global__ void {name}(const float* __restrict__ w, float* s, int tok, int pos) {{\n    {code}\n}}\n"
        );
        op_kernels.push(name);
    }
    let _ = writeln!(
        w,
        "// One step of one stream by one warp: the op list, then the canonical draw.\n\
         __device__ __forceinline__ int mg_step_warp(const float* __restrict__ w, float* s, int tok, int pos, float r) {{"
    );
    for (op, code) in program.ops().iter().zip(&warp_ops) {
        let _ = writeln!(w, "    {code}  // {op}");
    }
    let _ = writeln!(
        w,
        "    return mg_w_sample(s + MG_S_LOGITS, s + MG_S_DRAW, r);\n}}\n"
    );
    op_kernels
}

/// The lane steps, from the op list and from the prefix table.
fn write_lane_steps(w: &mut String, m: &Memory) {
    let _ = writeln!(
        w,
        "// One step of one stream by one warp, short vectors whole in every lane (lane ops): the\n\
         // residual in registers, matvec results published through the shared buffers sh0 and sh1,\n\
         // the KV cache at s + MG_S_KV as mg_step_warp's. Writes the logits to logits_out unless null.\n\
         __device__ __forceinline__ int mg_step_lanes(const float* __restrict__ w, float* s, int tok, int pos, float r, float* logits_out) {{\n    \
         float* const sh0 = s + MG_S_SHARE;\n    float* const sh1 = sh0 + MG_SHARE;\n{}}}\n",
        m.lane_body
    );
    let _ = writeln!(
        w,
        "// The same step from the prefix table (after the weights, see `device_floats`): row\n\
         // tok * MG_BLOCK + pos holds what the ops before the first attention make of (tok, pos).\n\
         __device__ __forceinline__ int mg_step_lanes_table(const float* __restrict__ w, float* s, int tok, int pos, float r, float* logits_out) {{\n    \
         float* const sh0 = s + MG_S_SHARE;\n    float* const sh1 = sh0 + MG_SHARE;\n{}}}\n",
        m.table_body
    );
}

/// Thread ops: the same list as scalar code over register arrays, the MLP as one loop.
fn write_thread_step(w: &mut String, program: &Program) {
    let shape = program.shape();
    let _ = writeln!(
        w,
        "// One step of one stream by one thread. The KV cache element i of position t, layer l is\n\
         // kv[(((2l + {{0 keys, 1 values}}) * MG_BLOCK + t) * MG_EMBD + i) * S].\n\
         // Positions t < P live in shared memory instead, element i of position t, layer l at\n\
         // skv[(((2l + {{0 keys, 1 values}}) * P + t) * MG_EMBD + i) * S].\n\
         template <int S, int P>\n\
         __device__ __forceinline__ int mg_step_thread(const float* __restrict__ w, float* kv, float* skv, int tok, int pos, float r, float* logits_out) {{"
    );
    for b in Buffer::ALL {
        let _ = writeln!(w, "    float {}[{}];", buffer_name(b), b.len(shape));
    }
    let ops = program.ops();
    let mut i = 0;
    while i < ops.len() {
        if let Some(mlp) = program.group(Fusion::Mlp, i) {
            for op in &ops[mlp.clone()] {
                let _ = writeln!(w, "    // {op}");
            }
            let _ = writeln!(w, "{}", thread_mlp(shape, &ops[mlp.clone()]));
            i = mlp.end;
        } else {
            let _ = writeln!(w, "    // {}\n{}", ops[i], thread_op(shape, &ops[i]));
            if let Some(line) = thread_cache_store(shape, ops, i) {
                let _ = writeln!(w, "{line}");
            }
            i += 1;
        }
    }
    let _ = writeln!(
        w,
        "    if (logits_out) {{\n        #pragma unroll\n        for (int i = 0; i < MG_VOCAB; i++) logits_out[i] = logits[i];\n    }}\n    \
         return mg_sample(logits, r);\n}}\n\n"
    );
}

pub(crate) fn buffer_name(b: Buffer) -> String {
    format!("{b:?}").to_lowercase()
}

pub(crate) fn param_macro(p: Param) -> String {
    format!("MG_W_{}", p.name().to_uppercase().replace('.', "_"))
}

/// [`F32Ops`] as CUDA C expressions, so that the model's numerical rules are rendered into the
/// source; the reciprocal root is `rsqrtf` (its error, at most 2 ulp, within the fp32 checks).
struct CExpr;

impl F32Ops for CExpr {
    type V = String;
    fn constant(&mut self, x: f32) -> String {
        format!("{x:?}f")
    }
    fn mul(&mut self, a: String, b: String) -> String {
        format!("({a} * {b})")
    }
    fn add(&mut self, a: String, b: String) -> String {
        format!("({a} + {b})")
    }
    fn div(&mut self, a: String, b: String) -> String {
        format!("({a} / {b})")
    }
    fn sqrt(&mut self, a: String) -> String {
        format!("sqrtf({a})")
    }
    fn rsqrt(&mut self, a: String) -> String {
        format!("rsqrtf({a})")
    }
}
