//! CUDA C rendered from the op list, for any shape, and (with the cargo feature `cuda`) the host
//! side that compiles it with NVRTC and runs it through the driver API.
//!
//! One source per shape holds every kernel; all of them are built from the same per-op device
//! code:
//!
//! - **warp ops**: each op of the list as a call to a one-warp device function over a *scratch*
//!   area holding the buffers, the KV cache, the attention probabilities and the sampler's vector.
//!   Lanes own the rows of a matvec (groups of lanes split its columns when the rows are fewer
//!   than the lanes); short vectors are read whole by every lane (RMSNorm, the sampler's maximum
//!   and running sums) instead of reduced by shuffles. `mg_op_<i>` wraps op `i` alone as a kernel
//!   (the naive variant launches them one by one and samples on the host), `mg_warp_step` runs a
//!   whole step and the canonical sampler, and `mg_streams_warp` (one stream per warp, registers
//!   capped for occupancy) runs whole benchmark streams in one launch, with the weights copied
//!   into shared memory;
//! - **lane ops**: the same list for one warp with the short vectors whole in every lane's
//!   registers: each lane computes the embedding, the RMSNorms and the residual adds itself, a
//!   matvec's rows are split over the lanes and published through shared memory with one
//!   `__syncwarp` (five a layer, two for the sampler, where the warp ops need one after every
//!   op), matvecs of one input by consecutive matrices (q, k, v) run as one, an RMSNorm before a
//!   matvec is a factor on its sums, the rectifier is taken in the matvec that feeds it, the
//!   attention weighs positions relative to the step's own score (falling back to a running
//!   maximum where that could overflow), and the sampler finds its draw with a ballot.
//!   `mg_step_lanes` is that step, `mg_lanes_step` one step as a kernel (the checks) and
//!   `mg_persistent` (one warp, every register it likes) runs a whole benchmark stream with it in
//!   one launch, the weights in shared memory; `mg_persistent_table` the same with the weights
//!   read from global memory through the read-only cache, which the compiler may keep in
//!   registers across the token loop, and each step started from the prefix table
//!   (`mg_step_lanes_table`, checked by `mg_lanes_table_step`): the ops before the first
//!   attention depend on the token and position alone, so their live results (the first layer's
//!   q, k, v and the residual) are evaluated ahead for every `(tok, pos)` and read in one row
//!   instead, and where its weights stay in registers its matvecs read their inputs whole instead
//!   of splitting them between groups of lanes (the two are rows side by side in the bench);
//! - **thread ops**: the same list as straight-line scalar code for one thread, buffers in
//!   registers, each key and value vector stored in the cache as soon as it is made, the KV caches
//!   interleaved across the threads of a block so that neighbouring threads touch neighbouring
//!   words at offsets known at compile time; `mg_streams` runs one stream per thread, with the
//!   weights (where they fit) and the first positions of every KV cache (the most read: a step at
//!   position p reads 0..p) in the block's shared memory, as many positions as fit beside the
//!   weights at [`STREAM_WARPS_PER_SM`] warps per SM, the rest of the caches in global memory;
//!   `mg_thread_step` one step of one stream, its cache all in global memory (for the checks).
//!
//! The device samplers draw without a division (the exponentials' running sum against r times
//! their total), and the attention takes its softmax weights in base 2 (`exp2f`).
//!
//! NVRTC compiles the source with [`NVRTC_OPTIONS`] (and the device's architecture); the source
//! names them in its first lines. `--ftz=true` flushes subnormal fp32 results (below 2^-126) to
//! zero, so that `exp2f`, `rsqrtf` and `__fdividef` are their special-function instruction alone,
//! without the instructions that rescale subnormal inputs and results. Nothing the model computes
//! is that small but exponentials of scores or logits more than 126 (in base 2) below the
//! largest, weights that already count for nothing beside it.
//!
//! Weights are uploaded in [`arrange`]'s order: the canonical layout with every matrix but the
//! embeddings transposed to `[in][out]`, so that the lanes (or the unrolled loops) reading row
//! `r` of `W·x` touch consecutive words, and the query weights multiplied by
//! [`base2_query_scale`] (the attention's `1/√head_dim` and `log2(e)`), so that the scores come
//! out in base 2 with no multiply on the device; the prefix table follows them in the same buffer
//! ([`device_floats`]).
//!
//! Streams follow [`microgpt_runtime::stream::Stream`]: BOS at position 0, restart after drawing BOS or
//! filling the block; stream `s` of a run with seed `seed` starts from
//! [`microgpt_runtime::stream::stream_seed`]`(seed, s)`. The per-launch checksum is [`Stream::run`]'s.
//!
//! [`Stream::run`]: microgpt_runtime::stream::Stream::run

#[cfg(feature = "cuda")]
pub mod host;

use microgpt_model::numerics::base2_query_scale;
use microgpt_model::plan::{Arrangement, PrefixRow, WeightPlan};
use microgpt_model::{Buffer, Layout, Op, Param, Program, RMS_EPS, Shape};
use microgpt_runtime::VariantSpec;
use microgpt_runtime::kernel::layout::prefix_table_f32;
use microgpt_weights::Weights;
use microgpt_weights::folded_f32;
use std::fmt::Write;

/// Shared memory the generated kernels may plan on per block (bytes): the H100's opt-in maximum
/// is 227 KiB; leave room for the scratch of a few warps.
pub const SHARED_WEIGHTS_LIMIT: usize = 160 * 1024;

/// Shared memory of one SM that the occupancy of `mg_streams_warp` is planned for (bytes): the
/// H100's 228 KiB less 1 KiB per block reserved by the driver.
pub const SHARED_PER_SM: usize = 224 * 1024;

/// Warps an SM holds at most (sm_90): `mg_streams_warp`'s register cap plans for no more blocks
/// than fill it.
pub const MAX_WARPS_PER_SM: usize = 64;

/// Warps per block of `mg_streams_warp` (one stream each), fewer where their scratch does not fit.
pub const WARPS_PER_BLOCK: usize = 8;

/// Weights per lane (the arranged weights over 32 lanes) up to which the warp matvecs load every
/// weight unconditionally (`MG_HOIST`), a lane past the last row reading the last row again,
/// which lets the compiler load the weights of a token loop that reads them from global memory
/// once, before the loop, into registers (`mg_persistent_table`). Past it the loads are made
/// only for rows in range, which keeps them in the loop: at `embd=48,layers=2,mlp=192` (1,833 a
/// lane, in global memory for every kernel) unconditional loads made `mg_persistent` and a
/// one-warp kernel reading its weights from global memory spill 204 bytes, conditional ones
/// nothing.
pub const HOIST_WEIGHTS_PER_LANE: usize = 160;

/// Threads per block of `mg_streams`; the KV caches of a block interleave with this stride, so
/// that every cache access has a constant offset from the thread's base address.
pub const STREAM_THREADS: usize = 128;

/// Warps per SM that `mg_streams`'s shared memory is planned for: each block keeps the first
/// positions of its streams' KV caches in shared memory, as many as fit beside the weights when
/// this many warps share an SM. Measured on an H100 at the default shape: 12 warps with 3
/// positions each gave 1.89 G tok/s, 16 warps with 2 positions 1.23 G, 8 warps with 4 or 5
/// positions 1.87-1.89 G.
pub const STREAM_WARPS_PER_SM: usize = 12;

/// The rendered source of one shape and the facts its host needs.
#[derive(Clone, Debug)]
pub struct CudaSource {
    pub shape: Shape,
    pub text: String,
    /// Floats of the arranged weights.
    pub weight_floats: usize,
    /// Floats of shared memory a block gives its copy of the weights (rounded up to 32); 0 when
    /// they do not fit and the kernels read them from global memory, through the cache.
    pub shared_weight_floats: usize,
    /// Floats of one warp's scratch (buffers, KV cache, probabilities).
    pub scratch_floats: usize,
    /// Floats of one warp's scratch in the lane kernels (`mg_persistent`, `mg_persistent_table`
    /// and their step kernels): the same, with room for the lane steps' shared buffers where they
    /// do not fit over the buffers.
    pub lane_scratch_floats: usize,
    /// Floats of one stream's KV cache.
    pub kv_floats: usize,
    /// Positions of each stream's KV cache that `mg_streams` keeps in shared memory (the first
    /// ones, the most read).
    pub kv_shared_positions: usize,
    /// Where the logits sit in a warp scratch (floats).
    pub logits_offset: usize,
    /// One kernel per op, `mg_op_0 ..`, in op-list order.
    pub op_kernels: Vec<String>,
}

impl CudaSource {
    /// Dynamic shared memory of a `mg_streams_warp` block with `warps` warps (bytes).
    pub fn shared_bytes(&self, warps: usize) -> usize {
        block_shared_bytes(self.shared_weight_floats, warps, self.scratch_floats)
    }

    /// Dynamic shared memory of `mg_persistent`'s block of one warp (bytes); `mg_persistent_table`
    /// keeps no weights there (`with_weights` false).
    pub fn persistent_shared_bytes(&self, with_weights: bool) -> usize {
        let weights = if with_weights {
            self.shared_weight_floats
        } else {
            0
        };
        block_shared_bytes(weights, 1, self.lane_scratch_floats)
    }

    /// Dynamic shared memory of a thread-per-stream block (bytes): its copy of the weights, then
    /// the first positions of its streams' KV caches.
    pub fn streams_shared_bytes(&self) -> usize {
        4 * (self.shared_weight_floats
            + STREAM_THREADS * self.kv_shared_positions * kv_position_floats(&self.shape))
    }

    /// Whether the blocks copy the weights into shared memory.
    pub fn weights_in_shared(&self) -> bool {
        self.shared_weight_floats > 0
    }

    /// Every `extern "C"` kernel of the source.
    pub fn kernels(&self) -> Vec<String> {
        let mut names = self.op_kernels.clone();
        names.push("mg_set_temperature".into());
        for launch in Launch::ALL {
            let (run, step) = launch.kernels();
            for k in [step, run] {
                if !names.iter().any(|n| n == k) {
                    names.push(k.into());
                }
            }
        }
        names
    }
}

/// The name of the launch-per-op variant: one launch of `mg_op_<i>` per op, the logits copied
/// back and the token drawn on the host.
pub const NAIVE: &str = "cuda-naive";

/// How each of the other CUDA variants runs whole timed windows in one launch: its kernels and
/// how streams map onto the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `cuda-persistent`: one stream on one warp by the lane ops, the weights in shared memory
    /// (`mg_persistent` <<<1, 32>>>).
    OneWarp,
    /// `cuda-persistent-table`: the same starting each step from the prefix table (the ops before
    /// the first attention evaluated ahead for every token and position, [`device_floats`]),
    /// weights and table read from global memory through the read-only data cache, which lets
    /// the compiler keep a lane's weights in registers across the token loop where they fit
    /// (`mg_persistent_table` <<<1, 32>>>).
    OneWarpTable,
    /// `cuda-streams`: one stream per thread, as many threads as fit on every SM (`mg_streams`).
    ThreadPerStream,
    /// `cuda-streams-warp`: one stream per warp, as many warps as fit on every SM
    /// (`mg_streams_warp`).
    WarpPerStream,
}

impl Launch {
    /// In the bench's order.
    pub const ALL: [Launch; 4] = [
        Launch::OneWarp,
        Launch::OneWarpTable,
        Launch::ThreadPerStream,
        Launch::WarpPerStream,
    ];

    /// The bench row's name.
    pub fn name(self) -> &'static str {
        match self {
            Launch::OneWarp => "cuda-persistent",
            Launch::OneWarpTable => "cuda-persistent-table",
            Launch::ThreadPerStream => "cuda-streams",
            Launch::WarpPerStream => "cuda-streams-warp",
        }
    }

    /// The kernel that runs whole windows, and the one-step kernel of its teacher-forced checks.
    pub fn kernels(self) -> (&'static str, &'static str) {
        match self {
            Launch::OneWarp => ("mg_persistent", "mg_lanes_step"),
            Launch::OneWarpTable => ("mg_persistent_table", "mg_lanes_table_step"),
            Launch::ThreadPerStream => ("mg_streams", "mg_thread_step"),
            Launch::WarpPerStream => ("mg_streams_warp", "mg_warp_step"),
        }
    }
}

/// Every CUDA variant's name, in the bench's order.
pub fn variant_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(NAIVE).chain(Launch::ALL.map(Launch::name))
}

/// Why the CUDA rows are skipped in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
const WITHOUT_CUDA: &str =
    "built without the `cuda` feature (cargo run --release --features cuda --example bench)";

/// Whether NVRTC, which compiles the CUDA rows' kernels, loads in this process; the reason (with
/// what to do) when not.
pub fn nvrtc_status() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    {
        host::nvrtc_present()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(WITHOUT_CUDA.into())
    }
}

/// The CUDA variants: [`NAIVE`] and one per [`Launch`]. Built without the `cuda` feature, or where
/// CUDA is missing, they are skipped with the reason.
pub fn variants() -> Vec<VariantSpec> {
    #[cfg(feature = "cuda")]
    {
        host::variants()
    }
    #[cfg(not(feature = "cuda"))]
    {
        variant_names()
            .map(|name| {
                VariantSpec::new(name, "cuda", microgpt_runtime::Precision::F32, |_, _| {
                    Err(WITHOUT_CUDA.into())
                })
            })
            .collect()
    }
}

/// The weights in the order and scale the kernels read them (see the module docs).
pub fn arrange(weights: &Weights) -> Vec<f32> {
    weight_plan(weights.shape()).arrange(&folded_f32(weights, None, true))
}

/// The weight plan of every CUDA kernel: neither padding nor alignment, so that every tensor
/// keeps its canonical offset (the offsets the source names), the embeddings as rows and every
/// other matrix as columns, `[in][out]` ([`transposed`]).
fn weight_plan(shape: &Shape) -> WeightPlan {
    let program = Program::forward(*shape);
    WeightPlan::new(
        shape,
        program.ops(),
        1,
        |n| n,
        |rows, _| Arrangement::Columns { rows_pad: rows },
    )
}

/// NVRTC's options for every source, besides `--gpu-architecture` (see the module docs).
pub const NVRTC_OPTIONS: [&str; 2] = ["--std=c++17", "--ftz=true"];

/// Floats each of a prefix table row's buffers is padded to (16 bytes: the lanes read them four
/// at a time).
const TABLE_PAD: usize = 4;

/// Where [`device_floats`] puts the prefix table: after `weight_floats` arranged weights, 16-byte
/// aligned.
fn table_offset(weight_floats: usize) -> usize {
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
fn kv_position_floats(shape: &Shape) -> usize {
    2 * shape.layers * shape.embd
}

fn transposed(p: Param) -> bool {
    !matches!(p, Param::Wte | Param::Wpe)
}

fn buffer_name(b: Buffer) -> String {
    format!("{b:?}").to_lowercase()
}

fn param_macro(p: Param) -> String {
    format!("MG_W_{}", p.name().to_uppercase().replace('.', "_"))
}

/// Dynamic shared memory of a block of `warps` warps (bytes): its copy of the weights, then each
/// warp's scratch.
fn block_shared_bytes(shared_weight_floats: usize, warps: usize, scratch_floats: usize) -> usize {
    4 * (shared_weight_floats + warps * scratch_floats)
}

/// Renders the CUDA C of `shape`.
pub fn render(shape: &Shape) -> CudaSource {
    let program = Program::forward(*shape);
    let layout = Layout::new(*shape);
    let (e, hd, block, vocab) = (shape.embd, shape.head_dim(), shape.block, shape.vocab);
    let kv_floats = block * kv_position_floats(shape);
    let weight_floats = layout.param_count();
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
    // The lane step's two shared buffers: over the warp step's buffers before the logits where
    // they fit (the lane step keeps those in registers), else after the warp scratch, in a longer
    // scratch of the lane kernels' own.
    let table = PrefixRow::new(shape, TABLE_PAD);
    // The table step runs only with the weights read from global memory (mg_persistent_table),
    // kept in registers where they fit (MG_HOIST): its matvecs read their inputs whole there.
    let hoist = weight_floats <= 32 * HOIST_WEIGHTS_PER_LANE;
    let (lane_body, lane_share) = lane_step(shape, program.ops(), None, false);
    let (table_body, table_share) = lane_step(shape, program.ops(), Some(&table), hoist);
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
    let warp_blocks_per_sm = (SHARED_PER_SM / warp_block_bytes).clamp(1, MAX_WARPS_PER_SM / WARPS_PER_BLOCK);
    let stream_block_bytes = SHARED_PER_SM * STREAM_THREADS / (32 * STREAM_WARPS_PER_SM);
    let kv_shared_positions = (stream_block_bytes.saturating_sub(4 * shared_weight_floats)
        / (4 * STREAM_THREADS * kv_position_floats(shape)))
    .min(block);

    let mut s = String::new();
    let w = &mut s;
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
        weight_floats,
        NVRTC_OPTIONS.join(" ")
    );
    for (name, value) in [
        ("MG_VOCAB", vocab),
        ("MG_BLOCK", block),
        ("MG_EMBD", e),
        ("MG_HEADS", shape.heads),
        ("MG_HEAD_DIM", hd),
        ("MG_MLP", shape.mlp),
        ("MG_BOS", shape.bos()),
        ("MG_WEIGHTS", weight_floats),
        ("MG_WEIGHTS_SHARED", shared_weight_floats),
        ("MG_KV", kv_floats),
        ("MG_STREAM_THREADS", STREAM_THREADS),
        ("MG_LAYERS", shape.layers),
        ("MG_KV_SHARED_POSITIONS", kv_shared_positions),
        ("MG_SCRATCH", scratch_floats),
        ("MG_LANE_SCRATCH", lane_scratch_floats),
        ("MG_WARPS_PER_BLOCK", WARPS_PER_BLOCK),
        ("MG_WARP_BLOCKS_PER_SM", warp_blocks_per_sm),
        ("MG_HOIST", usize::from(hoist)),
        ("MG_TABLE", table_offset(weight_floats)),
        ("MG_TABLE_ROW", table.len),
        (
            "MG_DEVICE_FLOATS",
            table_offset(weight_floats) + vocab * block * table.len,
        ),
    ] {
        let _ = writeln!(w, "#define {name} {value}");
    }
    for t in layout.tensors() {
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
    for (name, value) in &scratch {
        let _ = writeln!(w, "#define {name} {value}");
    }
    let _ = writeln!(w, "#define MG_RMS_EPS {:?}f", RMS_EPS as f32);
    w.push_str(PRELUDE);

    // Warp ops: one statement per op, over scratch `s` and weights `w`.
    let warp_ops: Vec<String> = program.ops().iter().map(|op| warp_op(shape, op)).collect();
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

    let _ = writeln!(
        w,
        "// One step of one stream by one warp, short vectors whole in every lane (lane ops): the\n\
         // residual in registers, matvec results published through the shared buffers sh0 and sh1,\n\
         // the KV cache at s + MG_S_KV as mg_step_warp's. Writes the logits to logits_out unless null.\n\
         __device__ __forceinline__ int mg_step_lanes(const float* __restrict__ w, float* s, int tok, int pos, float r, float* logits_out) {{\n    \
         float* const sh0 = s + MG_S_SHARE;\n    float* const sh1 = sh0 + MG_SHARE;\n{lane_body}}}\n"
    );
    let _ = writeln!(
        w,
        "// The same step from the prefix table (after the weights, see `device_floats`): row\n\
         // tok * MG_BLOCK + pos holds what the ops before the first attention make of (tok, pos).\n\
         __device__ __forceinline__ int mg_step_lanes_table(const float* __restrict__ w, float* s, int tok, int pos, float r, float* logits_out) {{\n    \
         float* const sh0 = s + MG_S_SHARE;\n    float* const sh1 = sh0 + MG_SHARE;\n{table_body}}}\n"
    );

    // Thread ops: the same list as scalar code over register arrays.
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
        if let Some(code) = thread_mlp(shape, &ops[i..]) {
            let _ = writeln!(
                w,
                "    // {}\n    // {}\n    // {}\n{code}",
                ops[i],
                ops[i + 1],
                ops[i + 2]
            );
            i += 3;
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
         return mg_sample(logits, r);\n}}\n"
    );
    w.push_str(KERNELS);
    CudaSource {
        shape: *shape,
        text: s,
        weight_floats,
        shared_weight_floats,
        scratch_floats,
        lane_scratch_floats,
        kv_floats,
        kv_shared_positions,
        logits_offset: logits_at,
        op_kernels,
    }
}

/// Where the lane step keeps a buffer.
#[derive(Clone, Debug)]
enum LaneHome {
    /// Whole in every lane's registers, as the array of the buffer's name.
    Registers,
    /// `of` (in registers) times the factor `scale`: an RMSNorm not yet applied.
    Scaled { of: Buffer, scale: String },
    /// Whole in shared buffer `buf` (`sh0`, `sh1`) from float `at`.
    Shared { buf: usize, at: usize },
    /// Whole in the step's row of the prefix table (global memory, `row`), from float `at`.
    Table { at: usize },
}

impl LaneHome {
    /// Whole in memory that every lane reads (shared memory or the table).
    fn in_memory(&self) -> bool {
        matches!(self, LaneHome::Shared { .. } | LaneHome::Table { .. })
    }
}

/// The lane step's bookkeeping of its two shared buffers: a matvec's lanes write their rows into
/// the current one, one `__syncwarp` makes them readable whole, and the next write after that sync
/// goes to the other buffer (or, with [`LaneStep::append`], to the current one past what it
/// holds). So a float is overwritten only after a second sync, which every lane reaches after
/// reading what the first one published; buffers published two syncs ago are gone.
struct LaneStep {
    text: String,
    homes: Vec<Option<LaneHome>>,
    current: usize,
    used: usize,
    synced: bool,
    /// Floats one shared buffer needs (the most either holds at once).
    size: usize,
}

impl LaneStep {
    fn sync(&mut self) {
        self.text.push_str("    __syncwarp();\n");
        self.sync_marked();
    }

    /// The state after a sync (emitted here or inside a device function).
    fn sync_marked(&mut self) {
        self.synced = true;
        let stale = 1 - self.current;
        for h in &mut self.homes {
            if matches!(h, Some(LaneHome::Shared { buf, .. }) if *buf == stale) {
                *h = None;
            }
        }
    }

    /// Room for `len` floats written before the next sync (16-byte aligned).
    fn alloc(&mut self, len: usize) -> (usize, usize) {
        if self.synced {
            self.current = 1 - self.current;
            self.used = 0;
        }
        self.append(len)
    }

    /// Room for `len` floats in the current buffer after what it holds, even past a sync: what is
    /// written there overlaps nothing that a lane may still read.
    fn append(&mut self, len: usize) -> (usize, usize) {
        self.synced = false;
        let at = self.used;
        self.used += len.next_multiple_of(4);
        self.size = self.size.max(self.used);
        (self.current, at)
    }

    fn home(&self, b: Buffer) -> LaneHome {
        self.homes[b.index()]
            .clone()
            .unwrap_or_else(|| panic!("the lane step reads {b:?} where no op left it"))
    }

    /// A whole vector as an operand: (expression, factor).
    fn operand(&mut self, b: Buffer) -> (String, String) {
        match self.home(b) {
            LaneHome::Registers => (buffer_name(b), "1.0f".into()),
            LaneHome::Scaled { of, scale } => (buffer_name(of), scale),
            LaneHome::Shared { buf, at } => {
                if buf == self.current && !self.synced {
                    self.sync();
                }
                (format!("sh{buf} + {at}"), "1.0f".into())
            }
            LaneHome::Table { at } => (format!("row + {at}"), "1.0f".into()),
        }
    }

    /// `b` as a register array, declared on first use (read from the table where it is there).
    fn registers(&mut self, shape: &Shape, b: Buffer) -> String {
        let (name, n) = (buffer_name(b), b.len(shape));
        match self.homes[b.index()] {
            Some(LaneHome::Registers) => {}
            Some(LaneHome::Table { at }) => {
                let _ = writeln!(
                    self.text,
                    "    float {name}[{n}];\n    mg_l_read<{n}>(row + {at}, {name});"
                );
                self.homes[b.index()] = Some(LaneHome::Registers);
            }
            _ => {
                let _ = writeln!(self.text, "    float {name}[{n}];");
                self.homes[b.index()] = Some(LaneHome::Registers);
            }
        }
        name
    }

    /// `b` changes: factors of it pending elsewhere no longer hold.
    fn written(&mut self, b: Buffer) {
        for h in &mut self.homes {
            if matches!(h, Some(LaneHome::Scaled { of, .. }) if *of == b) {
                *h = None;
            }
        }
    }
}

/// The op list as lane ops (see `mg_l_attention` and the others in the prelude): the body of
/// `mg_step_lanes`, and the floats one of its shared buffers needs. With `table`, the body of
/// `mg_step_lanes_table`: the ops after the history-free prefix, which start from the step's row
/// of the prefix table (`row`).
///
/// `whole_inputs`: a matvec whose input is in memory has every lane read it whole (`WHOLE`)
/// instead of splitting its columns between groups of lanes, for a step whose weights stay in
/// registers.
fn lane_step(shape: &Shape, ops: &[Op], table: Option<&PrefixRow>, whole_inputs: bool) -> (String, usize) {
    let (e, vocab) = (shape.embd, shape.vocab);
    let layout = Layout::new(*shape);
    let mut st = LaneStep {
        text: String::new(),
        homes: vec![None; Buffer::ALL.len()],
        current: 1,
        used: 0,
        synced: true,
        size: 0,
    };
    let mut i = 0;
    if let Some(t) = table {
        let _ = writeln!(
            st.text,
            "    // ops 0..{} from the prefix table: {}\n    \
             const float* const row = w + MG_TABLE + (tok * MG_BLOCK + pos) * MG_TABLE_ROW;",
            t.ops,
            t.live
                .iter()
                .map(|(b, at)| format!("{} at {at}", buffer_name(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &(b, at) in &t.live {
            st.homes[b.index()] = Some(LaneHome::Table { at });
        }
        i = t.ops;
    }
    while i < ops.len() {
        let op = ops[i];
        let _ = writeln!(st.text, "    // {op}");
        i += 1;
        match op {
            Op::Embed { out } => {
                let quads = e.is_multiple_of(4)
                    && layout.tensor(Param::Wte).offset.is_multiple_of(4)
                    && layout.tensor(Param::Wpe).offset.is_multiple_of(4);
                let o = st.registers(shape, out);
                st.written(out);
                let _ = writeln!(st.text, "    mg_l_embed<{e}, {quads}>(w, tok, pos, {o});");
            }
            Op::RmsNorm { input, out } => {
                if matches!(st.home(input), LaneHome::Table { .. }) {
                    st.registers(shape, input);
                }
                assert!(
                    matches!(st.home(input), LaneHome::Registers),
                    "the lane step normalises a vector in registers"
                );
                let x = buffer_name(input);
                let n = input.len(shape);
                if input == out {
                    st.written(out);
                    let _ = writeln!(
                        st.text,
                        "    mg_l_scale<{n}>({x}, mg_l_rms_scale<{n}>({x}), {x});"
                    );
                } else {
                    let scale = format!("{}_scale_{i}", buffer_name(out));
                    let _ = writeln!(st.text, "    const float {scale} = mg_l_rms_scale<{n}>({x});");
                    st.written(out);
                    st.homes[out.index()] = Some(LaneHome::Scaled { of: input, scale });
                }
            }
            Op::MatVec { weight, input, out } => {
                let (rows, cols) = weight.dims(shape);
                // Matvecs of the same input by matrices stored one after the other (q, k, v) run
                // as one, their outputs side by side.
                let mut outs = vec![out];
                let mut end = layout.tensor(weight).offset + rows * cols;
                while rows.is_multiple_of(4) && out != input {
                    let Some(&Op::MatVec {
                        weight: w2,
                        input: i2,
                        out: o2,
                    }) = ops.get(i)
                    else {
                        break;
                    };
                    let t = layout.tensor(w2);
                    if i2 != input
                        || o2 == input
                        || w2.dims(shape) != (rows, cols)
                        || t.offset != end
                        || outs.contains(&o2)
                    {
                        break;
                    }
                    if matches!(ops.get(i + 1), Some(Op::Relu { .. })) {
                        break;
                    }
                    let _ = writeln!(st.text, "    // {} (with the one above)", ops[i]);
                    outs.push(o2);
                    end += rows * cols;
                    i += 1;
                }
                let relu = matches!(ops.get(i), Some(Op::Relu { buf }) if *buf == out);
                if relu {
                    let _ = writeln!(st.text, "    // {} (in the matvec)", ops[i]);
                    i += 1;
                }
                let whole = whole_inputs && st.home(input).in_memory();
                let split = st.home(input).in_memory() && !whole;
                let (x, scale) = st.operand(input);
                let mut first = None;
                for &o in &outs {
                    let (buf, at) = st.alloc(rows);
                    first.get_or_insert((buf, at));
                    st.written(o);
                    st.homes[o.index()] = Some(LaneHome::Shared { buf, at });
                }
                let (buf, at) = first.expect("one output at least");
                let all = rows * outs.len();
                let stacked = if whole {
                    format!(", {rows}, true")
                } else if outs.len() > 1 {
                    format!(", {rows}")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    st.text,
                    "    mg_l_matvec<{all}, {cols}, {split}, {relu}{stacked}>(w + {}, {x}, {scale}, sh{buf} + {at});",
                    param_macro(weight)
                );
            }
            Op::Relu { buf } => {
                panic!("the lane step rectifies {buf:?} only right after the matvec that makes it")
            }
            Op::Attention { layer, q, k, v, out } => {
                let [q, k, v] = [q, k, v].map(|b| {
                    assert!(
                        st.home(b).in_memory(),
                        "the lane step's attention reads its vectors from memory"
                    );
                    st.operand(b).0
                });
                let (buf, at) = st.alloc(e);
                st.written(out);
                st.homes[out.index()] = Some(LaneHome::Shared { buf, at });
                let _ = writeln!(
                    st.text,
                    "    mg_l_attention<{e}, {}>(s + MG_S_KV + {}, s + MG_S_KV + {}, {q}, {k}, {v}, sh{buf} + {at}, pos);",
                    shape.heads,
                    2 * layer * shape.block * e,
                    (2 * layer + 1) * shape.block * e,
                );
            }
            Op::Add { input, into } => {
                if matches!(st.home(into), LaneHome::Table { .. }) {
                    st.registers(shape, into);
                }
                assert!(
                    st.home(input).in_memory() && matches!(st.home(into), LaneHome::Registers),
                    "the lane step adds a vector in memory into registers"
                );
                let (x, _) = st.operand(input);
                st.written(into);
                let _ = writeln!(
                    st.text,
                    "    mg_l_add<{}>({x}, {});",
                    into.len(shape),
                    buffer_name(into)
                );
            }
            Op::Logits { input } => {
                let in_memory = st.home(input).in_memory();
                let mode = if whole_inputs && in_memory {
                    format!("false, {vocab}, true")
                } else {
                    in_memory.to_string()
                };
                let (x, scale) = st.operand(input);
                let k = vocab.div_ceil(32);
                let _ = writeln!(
                    st.text,
                    "    float lg[{k}];\n    mg_w_rows<{vocab}, {}, {mode}>(w + {}, {x}, lg);",
                    input.len(shape),
                    param_macro(Param::LmHead)
                );
                if scale != "1.0f" {
                    let _ = writeln!(
                        st.text,
                        "    #pragma unroll\n    for (int k = 0; k < {k}; k++) lg[k] *= {scale};"
                    );
                }
                let _ = writeln!(
                    st.text,
                    "    if (logits_out) {{\n        #pragma unroll\n        for (int k = 0; k < {k}; k++) {{\n            \
                     const int i = (threadIdx.x & 31) + 32 * k;\n            \
                     if ((threadIdx.x & 31) < MG_ROW_LANES({vocab}) && i < {vocab}) logits_out[i] = lg[k];\n        }}\n    }}"
                );
                // The draw writes the logits and then the exponentials, a sync after each; both in
                // sh1 when the logits are there, so that the step ends with sh0 free for the next.
                let (a, at_a) = st.alloc(vocab);
                st.sync_marked();
                let (b, at_b) = if a == 1 { st.append(vocab) } else { st.alloc(vocab) };
                st.sync_marked();
                let _ = writeln!(
                    st.text,
                    "    const int next = mg_l_sample<{vocab}>(lg, sh{a} + {at_a}, sh{b} + {at_b}, r);"
                );
            }
        }
    }
    // The next step writes sh0 first: every lane must be done reading it.
    assert_eq!(st.current, 1, "the lane step ends reading sh1");
    st.text.push_str("    return next;\n");
    (st.text, st.size)
}

/// One op as a call of a warp device function.
fn warp_op(shape: &Shape, op: &Op) -> String {
    let buf = |b: Buffer| format!("s + MG_S_{}", buffer_name(b).to_uppercase());
    let (e, block) = (shape.embd, shape.block);
    match *op {
        Op::Embed { out } => format!("mg_w_embed<{e}>(w, tok, pos, {});", buf(out)),
        Op::RmsNorm { input, out } => format!("mg_w_rmsnorm<{e}>({}, {});", buf(input), buf(out)),
        Op::MatVec { weight, input, out } => {
            let (rows, cols) = weight.dims(shape);
            format!(
                "mg_w_matvec<{rows}, {cols}>(w + {}, {}, {});",
                param_macro(weight),
                buf(input),
                buf(out)
            )
        }
        Op::Logits { input } => {
            let (rows, cols) = Param::LmHead.dims(shape);
            format!(
                "mg_w_matvec<{rows}, {cols}>(w + {}, {}, {});",
                param_macro(Param::LmHead),
                buf(input),
                buf(Buffer::Logits)
            )
        }
        Op::Attention { layer, q, k, v, out } => format!(
            "mg_w_attention<{e}, {}, {block}>(s + MG_S_KV + {}, s + MG_S_KV + {}, {}, {}, {}, {}, s + MG_S_PROBS, pos);",
            shape.heads,
            2 * layer * block * e,
            (2 * layer + 1) * block * e,
            buf(q),
            buf(k),
            buf(v),
            buf(out)
        ),
        Op::Add { input, into } => {
            format!("mg_w_add<{}>({}, {});", into.len(shape), buf(input), buf(into))
        }
        Op::Relu { buf: b } => format!("mg_w_relu<{}>({});", b.len(shape), buf(b)),
    }
}

/// One op as scalar code over the thread's register arrays.
fn thread_op(shape: &Shape, op: &Op) -> String {
    let n = buffer_name;
    let e = shape.embd;
    let unroll = "#pragma unroll";
    match *op {
        Op::Embed { out } => format!(
            "    {unroll}\n    for (int i = 0; i < {e}; i++) {o}[i] = w[MG_W_WTE + tok * {e} + i] + w[MG_W_WPE + pos * {e} + i];",
            o = n(out)
        ),
        Op::RmsNorm { input, out } => format!(
            "    {{\n        float ss = 0.0f;\n        {unroll}\n        for (int i = 0; i < {e}; i++) ss += {x}[i] * {x}[i];\n        \
             const float scale = 1.0f / sqrtf(ss / {e}.0f + MG_RMS_EPS);\n        {unroll}\n        \
             for (int i = 0; i < {e}; i++) {o}[i] = {x}[i] * scale;\n    }}",
            x = n(input),
            o = n(out)
        ),
        Op::MatVec { weight, input, out } => thread_matvec(shape, weight, input, out),
        Op::Logits { input } => thread_matvec(shape, Param::LmHead, input, Buffer::Logits),
        Op::Attention { layer, q, k, v, out } => format!(
            "    mg_t_attention<{e}, {}, S, P>(kv + {} * S, kv + {} * S, skv + {} * P * S, skv + {} * P * S, {}, {}, pos);  // {} and {} are in the cache",
            shape.heads,
            2 * layer * shape.block * e,
            (2 * layer + 1) * shape.block * e,
            2 * layer * e,
            (2 * layer + 1) * e,
            n(q),
            n(out),
            n(k),
            n(v),
        ),
        Op::Add { input, into } => format!(
            "    {unroll}\n    for (int i = 0; i < {}; i++) {o}[i] += {x}[i];",
            into.len(shape),
            o = n(into),
            x = n(input)
        ),
        Op::Relu { buf } => format!(
            "    {unroll}\n    for (int i = 0; i < {}; i++) {b}[i] = fmaxf({b}[i], 0.0f);",
            buf.len(shape),
            b = n(buf)
        ),
    }
}

/// When op `i` makes the key or value vector of a later attention op (nothing writing it in
/// between), the thread step stores it in that layer's cache right away, so that it need not stay
/// in registers until the attention (the attention op itself stores nothing).
fn thread_cache_store(shape: &Shape, ops: &[Op], i: usize) -> Option<String> {
    let made = ops[i].output();
    for op in &ops[i + 1..] {
        if let Op::Attention { layer, k, v, .. } = *op {
            let values = if k == made {
                0
            } else if v == made {
                1
            } else {
                continue;
            };
            let at = (2 * layer + values) * shape.block * shape.embd;
            let shared_at = (2 * layer + values) * shape.embd;
            return Some(format!(
                "    mg_t_cache_store<{}, S, P>(kv + {at} * S, skv + {shared_at} * P * S, {}, pos);  // cache[pos] of layer {layer}",
                shape.embd,
                buffer_name(made)
            ));
        }
        if op.output() == made {
            return None;
        }
    }
    None
}

/// `up · x → h; relu(h); down · h → y` as one `mg_t_mlp` call: one loop over the hidden units, so
/// that the hidden vector never has to live in registers (it would not fit beside the rest at
/// larger shapes). `y[r]` still sums its terms in the reference's order.
fn thread_mlp(shape: &Shape, ops: &[Op]) -> Option<String> {
    let [
        Op::MatVec {
            weight: up,
            input,
            out: hidden,
        },
        Op::Relu { buf },
        Op::MatVec {
            weight: down,
            input: h2,
            out,
        },
        ..,
    ] = *ops
    else {
        return None;
    };
    if buf != hidden || h2 != hidden || input == hidden || out == hidden {
        return None;
    }
    let (mlp, cols) = up.dims(shape);
    let (rows, mlp2) = down.dims(shape);
    if mlp != mlp2 {
        return None;
    }
    Some(format!(
        "    mg_t_mlp<{rows}, {cols}, {mlp}, {}>(w + {}, w + {}, {}, {});",
        quads(shape, up) && quads(shape, down),
        param_macro(up),
        param_macro(down),
        buffer_name(input),
        buffer_name(out)
    ))
}

fn thread_matvec(shape: &Shape, weight: Param, input: Buffer, out: Buffer) -> String {
    let (rows, cols) = weight.dims(shape);
    format!(
        "    mg_t_matvec<{rows}, {cols}, {}>(w + {}, {}, {});",
        quads(shape, weight),
        param_macro(weight),
        buffer_name(input),
        buffer_name(out)
    )
}

/// Whether the thread kernels may read `p`'s transposed rows four at a time (`float4`): its row
/// count and its offset are multiples of 4, so that every such load is 16-byte aligned (the
/// weights start 16-byte aligned in global and in shared memory).
fn quads(shape: &Shape, p: Param) -> bool {
    let offset = Layout::new(*shape).tensor(p).offset;
    transposed(p) && p.dims(shape).0.is_multiple_of(4) && offset.is_multiple_of(4)
}

/// Device helpers shared by every kernel.
const PRELUDE: &str = r#"
#define MG_FULL 0xffffffffu
#define MG_NEG_INF __int_as_float(0xff800000)
// exp(x) = exp2(x log2(e)): the samplers take their exponentials as exp2f. (Attention scores come
// out in base 2 without it: the query weights are uploaded times log2(e) / sqrt(head_dim), see
// `arrange`.)
#define MG_LOG2E 1.4426950408889634f
// Warp code visits element i = lane + 32 k of an N-vector for k < MG_LANE_STEPS(N): unrolled and
// predicated, no loop.
#define MG_LANE_STEPS(N) (((N) + 31) / 32)

__device__ __forceinline__ unsigned mg_xorshift32(unsigned x) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

// The canonical draw: the top 24 bits as a float in [0, 1).
__device__ __forceinline__ float mg_uniform24(unsigned x) {
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ float mg_warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MG_FULL, v, o);
    return v;
}

__device__ __forceinline__ float mg_warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(MG_FULL, v, o));
    return v;
}

// The canonical draw (softmax(logits / T), then the first i < vocab - 1 whose running sum exceeds
// r, else BOS) without a division: the exponentials exp((l_i - max) / T), with 1/T as a factor,
// summed left to right, and their running sum compared with r times that total instead of each
// normalised. The same draw as the reference's unless r lies within rounding (~1e-7) of a
// boundary of the distribution, as with any other exp. The running sums never decrease, so the
// first i whose sum exceeds r is the count of those that do not.
__device__ float mg_inv_temperature = 2.0f;

__device__ __forceinline__ int mg_sample(const float* logits, float r) {
    const float it = mg_inv_temperature;
    float m = logits[0];
    #pragma unroll
    for (int i = 1; i < MG_VOCAB; i++) m = fmaxf(m, logits[i]);
    float e[MG_VOCAB];
    float total = 0.0f;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) {
        e[i] = expf((logits[i] - m) * it);
        total += e[i];
    }
    const float rt = r * total;
    float run = 0.0f;
    int chosen = 0;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB - 1; i++) {
        run += e[i];
        chosen += run <= rt ? 1 : 0;
    }
    return chosen;
}

// dst[0..N) = src[0..N), src 16-byte aligned: four at a time.
template <int N>
__device__ __forceinline__ void mg_l_read(const float* src, float* dst) {
    #pragma unroll
    for (int j = 0; j < N / 4; j++) {
        const float4 q = reinterpret_cast<const float4*>(src)[j];
        dst[4 * j] = q.x;
        dst[4 * j + 1] = q.y;
        dst[4 * j + 2] = q.z;
        dst[4 * j + 3] = q.w;
    }
    #pragma unroll
    for (int i = N / 4 * 4; i < N; i++) dst[i] = src[i];
}

// The same draw by a warp, with the same result bit for bit. The lane owning logit i (i = lane +
// 32 k) takes its exponential; the vectors go through `draw` (a scratch of MG_VOCAB floats,
// 16-byte aligned) so that every lane reads them whole, as broadcasts, for the maximum, the total
// and the running sum, which it takes left to right as mg_sample does.
//
// mg_w_share: lane-owned v (element lane + 32 k in v[k]) into `all`, whole, in every lane,
// through `buf` (MG_VOCAB floats, 16-byte aligned). The caller syncs the warp before a second
// share through the same buffer.
__device__ __forceinline__ void mg_w_share(float* buf, const float* v, float* all) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(MG_VOCAB); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < MG_VOCAB) buf[i] = v[k];
    }
    __syncwarp();
    mg_l_read<MG_VOCAB>(buf, all);
}

__device__ __forceinline__ int mg_w_sample(const float* logits, float* draw, float r) {
    constexpr int K = MG_LANE_STEPS(MG_VOCAB);
    const int lane = threadIdx.x & 31;
    const float it = mg_inv_temperature;
    float v[K], all[MG_VOCAB];
    #pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = lane + 32 * k;
        v[k] = i < MG_VOCAB ? logits[i] : 0.0f;
    }
    mg_w_share(draw, v, all);
    float mq[4] = {MG_NEG_INF, MG_NEG_INF, MG_NEG_INF, MG_NEG_INF};
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) mq[i % 4] = fmaxf(mq[i % 4], all[i]);
    const float m = fmaxf(fmaxf(mq[0], mq[1]), fmaxf(mq[2], mq[3]));
    #pragma unroll
    for (int k = 0; k < K; k++) v[k] = expf((v[k] - m) * it);
    __syncwarp();  // every lane has read the logits out of draw
    mg_w_share(draw, v, all);
    float total = 0.0f;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) total += all[i];
    const float rt = r * total;
    float run = 0.0f;
    int chosen = 0;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB - 1; i++) {
        run += all[i];
        chosen += run <= rt ? 1 : 0;
    }
    return chosen;
}

template <int E>
__device__ __forceinline__ void mg_w_embed(const float* __restrict__ w, int tok, int pos, float* out) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(E); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < E) out[i] = w[MG_W_WTE + tok * E + i] + w[MG_W_WPE + pos * E + i];
    }
    __syncwarp();
}

// Every lane takes the whole sum of squares itself (the vector read as broadcasts, four partial
// sums) where that is shorter than a warp reduction; longer vectors are reduced across lanes.
template <int N>
__device__ __forceinline__ void mg_w_rmsnorm(const float* x, float* out) {
    const int lane = threadIdx.x & 31;
    float ss;
    if constexpr (N <= 64 && N % 4 == 0) {
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        #pragma unroll
        for (int i = 0; i < N; i += 4) {
            const float4 q = *reinterpret_cast<const float4*>(x + i);
            a[0] = fmaf(q.x, q.x, a[0]);
            a[1] = fmaf(q.y, q.y, a[1]);
            a[2] = fmaf(q.z, q.z, a[2]);
            a[3] = fmaf(q.w, q.w, a[3]);
        }
        ss = (a[0] + a[1]) + (a[2] + a[3]);
        __syncwarp();  // out may be x: every lane has read it
    } else {
        ss = 0.0f;
        #pragma unroll
        for (int k = 0; k < MG_LANE_STEPS(N); k++) {
            const int i = lane + 32 * k;
            if (i < N) ss = fmaf(x[i], x[i], ss);
        }
        ss = mg_warp_sum(ss);
    }
    const float scale = 1.0f / sqrtf(ss / (float)N + MG_RMS_EPS);
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = lane + 32 * k;
        if (i < N) out[i] = x[i] * scale;
    }
    __syncwarp();
}

// Lanes per column group of a warp matvec with ROWS rows: a power of two, at least ROWS where
// ROWS <= 32 (32 / MG_ROW_LANES groups of lanes then split the columns).
#define MG_ROW_LANES(ROWS) ((ROWS) <= 1 ? 1 : (ROWS) <= 2 ? 2 : (ROWS) <= 4 ? 4 : (ROWS) <= 8 ? 8 : (ROWS) <= 16 ? 16 : 32)

// The rows of y = W x that this lane owns, W stored transposed ([COLS][ROWS]), x whole (shared
// memory or the lane's registers, read as broadcasts). Lane r owns rows r % RP, r % RP + 32, ...
// (RP = MG_ROW_LANES(ROWS)); when ROWS leaves lanes idle (ROWS <= 16), G = 32 / RP groups of lanes
// split the columns (group g takes c = g, g + G, ..., so that the groups read different banks)
// and shuffles add the groups' sums, so that every group ends with the whole rows: y[k] is row
// r % RP + 32 k (where that row is past the end, a value no caller may use). Each lane sums its
// columns into A interleaved partial sums, to shorten the dependency chain. Without SPLIT every
// lane takes all the columns (the idle lanes repeat rows): for an x in registers, which a lane
// cannot index by its group. With WHOLE (not SPLIT) x is in memory, 16-byte aligned, and every
// lane reads it whole into registers first, four floats at a time: for weights kept in registers,
// where a split costs a shuffle and a load a column while whole rows cost only registers. With
// RB < ROWS, W is ROWS / RB matrices of RB rows one after the other in memory (each transposed),
// read as one.
template <int ROWS, int COLS, bool SPLIT = true, int RB = ROWS, bool WHOLE = false>
__device__ __forceinline__ void mg_w_rows(const float* __restrict__ wt, const float* x, float (&y)[MG_LANE_STEPS(ROWS)]) {
    static_assert(!(SPLIT && WHOLE), "a vector read whole is not split");
    constexpr int RP = MG_ROW_LANES(ROWS);
    constexpr int G = SPLIT ? 32 / RP : 1;
    constexpr int K = MG_LANE_STEPS(ROWS);
    constexpr int CG = (COLS + G - 1) / G;
    constexpr int A = CG >= 16 ? 4 : CG >= 2 ? 2 : 1;
    const int lane = threadIdx.x & 31;
    const int row = lane % RP, g = SPLIT ? lane / RP : 0;
    static_assert(ROWS % RB == 0, "whole matrices of RB rows");
    float acc[K][A];
    float xw[WHOLE ? COLS : 1];
    if constexpr (WHOLE) mg_l_read<COLS>(x, xw);
    const float* wr[K];  // element (r, 0) of the lane's rows; element (r, c) at wr[k][c * RB]
    #pragma unroll
    for (int k = 0; k < K; k++) {
        #pragma unroll
        for (int a = 0; a < A; a++) acc[k][a] = 0.0f;
        // A row past the end reads the last row: the word the lane owning it reads in the same
        // step, a broadcast (no bank conflict, no extra sector).
        const int r = row + 32 * k < ROWS ? row + 32 * k : ROWS - 1;
        if constexpr (RB == ROWS) {
            wr[k] = wt + r;
        } else {
            wr[k] = wt + (r / RB) * (RB * COLS) + r % RB;
        }
    }
    #pragma unroll
    for (int j = 0; j < CG; j++) {
        const int c = j * G + g;
        if (c < COLS) {
            float xc;
            if constexpr (WHOLE) {
                xc = xw[c];
            } else {
                xc = x[c];
            }
            #pragma unroll
            for (int k = 0; k < K; k++) {
                // With MG_HOIST a row past the end sums the last row again and is never stored:
                // the loads depend on no condition, so a compiler may move them (out of a loop,
                // for weights that stay). Without it they are made for rows in range only.
                if (MG_HOIST || row + 32 * k < ROWS) acc[k][j % A] = fmaf(wr[k][c * RB], xc, acc[k][j % A]);
            }
        }
    }
    #pragma unroll
    for (int k = 0; k < K; k++) {
        float v = acc[k][0];
        #pragma unroll
        for (int a = 1; a < A; a++) v += acc[k][a];
        #pragma unroll
        for (int o = 32 / G; o < 32; o <<= 1) v += __shfl_xor_sync(MG_FULL, v, o);
        y[k] = v;
    }
}

// out = W (x * scale) (rectified when RELU), written to shared memory by the lanes owning the rows
// (mg_w_rows, SPLIT or WHOLE when x is in memory; W possibly several matrices of RB rows); the
// caller syncs the warp before any lane reads it.
template <int ROWS, int COLS, bool SPLIT, bool RELU, int RB = ROWS, bool WHOLE = false>
__device__ __forceinline__ void mg_l_matvec(const float* __restrict__ wt, const float* x, float scale, float* out) {
    float v[MG_LANE_STEPS(ROWS)];
    mg_w_rows<ROWS, COLS, SPLIT, RB, WHOLE>(wt, x, v);
    const int lane = threadIdx.x & 31;
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(ROWS); k++) {
        const int r = lane + 32 * k;
        if (lane < MG_ROW_LANES(ROWS) && r < ROWS) out[r] = RELU ? fmaxf(v[k] * scale, 0.0f) : v[k] * scale;
    }
}

// y = W x by a warp (mg_w_rows), stored by the lanes of column group 0, the warp synced.
template <int ROWS, int COLS>
__device__ __forceinline__ void mg_w_matvec(const float* __restrict__ wt, const float* x, float* y) {
    mg_l_matvec<ROWS, COLS, true, false>(wt, x, 1.0f, y);
    __syncwarp();
}

template <int N>
__device__ __forceinline__ void mg_w_add(const float* x, float* into) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < N) into[i] += x[i];
    }
    __syncwarp();
}

template <int N>
__device__ __forceinline__ void mg_w_relu(float* b) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < N) b[i] = fmaxf(b[i], 0.0f);
    }
    __syncwarp();
}

// Causal attention at `pos`: store k and v, then per head softmax(q.K[t] / sqrt(hd)) over t <= pos
// (in base 2: Wq carries log2(e), see arrange) and out = sum_t p_t V[t] (lanes own channels).
// keys/values: [T][E].
// When the heads divide the warp, each head gets 32 / H lanes (positions g, g + 32 / H, ...) and
// every head's maximum and sum are reduced at once; else the heads take turns, lanes owning
// positions.
template <int E, int H, int T>
__device__ __forceinline__ void mg_w_attention(float* keys, float* values, const float* q, const float* k,
                                               const float* v, float* out, float* probs, int pos) {
    constexpr int HD = E / H;
    const int lane = threadIdx.x & 31;
    #pragma unroll
    for (int j = 0; j < MG_LANE_STEPS(E); j++) {
        const int i = lane + 32 * j;
        if (i < E) {
            keys[pos * E + i] = k[i];
            values[pos * E + i] = v[i];
        }
    }
    __syncwarp();
    if constexpr (32 % H == 0) {
        constexpr int G = 32 / H;
        constexpr int K = (T + G - 1) / G;
        const int h = lane / G, g = lane % G;
        float d[K];
        float m = MG_NEG_INF;
        #pragma unroll
        for (int j = 0; j < K; j++) {
            const int t = g + j * G;
            d[j] = 0.0f;
            if (t <= pos) {
                float acc = 0.0f;
                #pragma unroll
                for (int c = 0; c < HD; c++) acc = fmaf(q[h * HD + c], keys[t * E + h * HD + c], acc);
                d[j] = acc;
                m = fmaxf(m, d[j]);
            }
        }
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(MG_FULL, m, o));
        float sum = 0.0f;
        #pragma unroll
        for (int j = 0; j < K; j++) {
            if (g + j * G <= pos) {
                d[j] = exp2f(d[j] - m);
                sum += d[j];
            }
        }
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(MG_FULL, sum, o);
        #pragma unroll
        for (int j = 0; j < K; j++) {
            const int t = g + j * G;
            if (t <= pos) probs[h * T + t] = d[j] / sum;
        }
    } else {
        #pragma unroll
        for (int h = 0; h < H; h++) {
            float m = MG_NEG_INF;
            for (int t = lane; t <= pos; t += 32) {
                float d = 0.0f;
                #pragma unroll
                for (int j = 0; j < HD; j++) d = fmaf(q[h * HD + j], keys[t * E + h * HD + j], d);
                probs[h * T + t] = d;
                m = fmaxf(m, d);
            }
            m = mg_warp_max(m);
            float sum = 0.0f;
            for (int t = lane; t <= pos; t += 32) {
                const float p = exp2f(probs[h * T + t] - m);
                probs[h * T + t] = p;
                sum += p;
            }
            sum = mg_warp_sum(sum);
            for (int t = lane; t <= pos; t += 32) probs[h * T + t] /= sum;
        }
    }
    __syncwarp();
    #pragma unroll
    for (int j = 0; j < MG_LANE_STEPS(E); j++) {
        const int i = lane + 32 * j;
        if (i < E) {
            const float* p = probs + (i / HD) * T;
            float acc[2] = {0.0f, 0.0f};  // even and odd positions: half the chain
            #pragma unroll
            for (int t = 0; t < T; t++) {
                if (t <= pos) acc[t % 2] = fmaf(p[t], values[t * E + i], acc[t % 2]);
            }
            out[i] = acc[0] + acc[1];
        }
    }
    __syncwarp();
}

// ---- Lane ops (mg_step_lanes): short vectors whole in every lane ----
// The residual stream lives in every lane's registers, and each lane computes the elementwise ops
// (embedding, RMSNorm, residual adds) on it itself; the rows of a matvec are split over the lanes
// (mg_w_rows) and the results go through shared memory, one __syncwarp, to every lane whole. The
// RMSNorm before a matvec is a factor applied to its sums, so that the matvec need not wait for
// the square root.

// Sums and maxima of N values as a balanced tree of pairs (a short chain, the same order in every
// lane).
template <int N>
__device__ __forceinline__ float mg_tree_sum(const float* a) {
    if constexpr (N == 1) {
        return a[0];
    } else {
        return mg_tree_sum<N / 2>(a) + mg_tree_sum<N - N / 2>(a + N / 2);
    }
}

template <int N>
__device__ __forceinline__ float mg_tree_max(const float* a) {
    if constexpr (N == 1) {
        return a[0];
    } else {
        return fmaxf(mg_tree_max<N / 2>(a), mg_tree_max<N - N / 2>(a + N / 2));
    }
}

// x = wte[tok] + wpe[pos], every lane. QUADS: E and both tables' offsets are multiples of 4.
template <int E, bool QUADS>
__device__ __forceinline__ void mg_l_embed(const float* __restrict__ w, int tok, int pos, float* x) {
    float p[E];
    if constexpr (QUADS) {
        mg_l_read<E>(w + MG_W_WTE + tok * E, x);
        mg_l_read<E>(w + MG_W_WPE + pos * E, p);
    } else {
        #pragma unroll
        for (int i = 0; i < E; i++) {
            x[i] = w[MG_W_WTE + tok * E + i];
            p[i] = w[MG_W_WPE + pos * E + i];
        }
    }
    #pragma unroll
    for (int i = 0; i < E; i++) x[i] += p[i];
}

// RMSNorm's factor 1 / sqrt(mean(x^2) + eps) of a vector in the lane's registers.
template <int N>
__device__ __forceinline__ float mg_l_rms_scale(const float* x) {
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    #pragma unroll
    for (int i = 0; i < N; i++) a[i % 4] = fmaf(x[i], x[i], a[i % 4]);
    return rsqrtf(((a[0] + a[1]) + (a[2] + a[3])) * (1.0f / (float)N) + MG_RMS_EPS);
}

template <int N>
__device__ __forceinline__ void mg_l_scale(const float* x, float scale, float* out) {
    #pragma unroll
    for (int i = 0; i < N; i++) out[i] = x[i] * scale;
}

// into += v, into in the lane's registers, v in shared memory (16-byte aligned).
template <int N>
__device__ __forceinline__ void mg_l_add(const float* v, float* into) {
    float t[N];
    mg_l_read<N>(v, t);
    #pragma unroll
    for (int i = 0; i < N; i++) into[i] += t[i];
}

// q . keys[0..HD), q in registers; with QUADS (HD and the offsets multiples of 4) four at a time.
template <int HD, bool QUADS>
__device__ __forceinline__ float mg_l_dot(const float* q, const float* keys) {
    float kt[HD];
    if constexpr (QUADS) {
        mg_l_read<HD>(keys, kt);
    } else {
        #pragma unroll
        for (int c = 0; c < HD; c++) kt[c] = keys[c];
    }
    float d = 0.0f;
    #pragma unroll
    for (int c = 0; c < HD; c++) d = fmaf(q[c], kt[c], d);
    return d;
}

// The softmax sums of mg_l_attention for the channels a lane owns (see there): l[j], the sum of
// the weights, and acc[j], the weighted value, each merged over the groups of lanes. ONLINE: the
// weights relative to the running maximum, rescaled when it grows (a second exponential a
// position, and the groups' maxima merged first); else relative to this position's own score, one
// exponential a position, which overflows where an older score exceeds it by more than 127 (in
// base 2).
template <int E, int H, bool ONLINE>
__device__ __forceinline__ void mg_l_softmax(const float* keys, const float* values, const float* q, const float* k,
                                             const float* v, int pos, float (&l)[E <= 32 && 32 % E == 0 ? 1 : MG_LANE_STEPS(E)],
                                             float (&acc)[E <= 32 && 32 % E == 0 ? 1 : MG_LANE_STEPS(E)]) {
    constexpr int HD = E / H;
    constexpr int G = E <= 32 && 32 % E == 0 ? 32 / E : 1;
    constexpr int D = G > 1 ? 1 : MG_LANE_STEPS(E);
    constexpr bool QUADS = HD % 4 == 0;
    const int lane = threadIdx.x & 31;
    const int g = G > 1 ? lane / E : 0;
    float m[D];
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        m[j] = MG_NEG_INF;
        l[j] = 0.0f;
        acc[j] = 0.0f;
        if (d < E) {
            const int h = d / HD;
            float qh[HD];  // the head's query in registers for the whole loop
            #pragma unroll
            for (int c = 0; c < HD; c++) qh[c] = q[h * HD + c];
            const float own = mg_l_dot<HD, QUADS>(qh, k + h * HD);
            if (g == 0) {
                m[j] = own;
                l[j] = 1.0f;
                acc[j] = v[d];
            }
            #pragma unroll 2
            for (int t = g; t < pos; t += G) {
                const float s = mg_l_dot<HD, QUADS>(qh, keys + t * E + h * HD);
                if constexpr (ONLINE) {
                    const float mn = fmaxf(m[j], s);
                    const float c = exp2f(m[j] - mn);  // 0 while nothing is summed, 1 while the maximum holds
                    const float p = exp2f(s - mn);
                    l[j] = fmaf(l[j], c, p);
                    acc[j] = fmaf(acc[j], c, p * values[t * E + d]);
                    m[j] = mn;
                } else {
                    const float p = exp2f(s - own);
                    l[j] += p;
                    acc[j] = fmaf(p, values[t * E + d], acc[j]);
                }
            }
        }
    }
    #pragma unroll
    for (int j = 0; j < D; j++) {
        if constexpr (G > 1) {
            if constexpr (ONLINE) {
                float mt = m[j];
                #pragma unroll
                for (int o = E; o < 32; o <<= 1) mt = fmaxf(mt, __shfl_xor_sync(MG_FULL, mt, o));
                const float c = exp2f(m[j] - mt);  // group 0 always holds this position: mt is finite
                l[j] *= c;
                acc[j] *= c;
            }
            #pragma unroll
            for (int o = E; o < 32; o <<= 1) {
                l[j] += __shfl_xor_sync(MG_FULL, l[j], o);
                acc[j] += __shfl_xor_sync(MG_FULL, acc[j], o);
            }
        }
    }
}

// Causal attention at `pos` for the lane ops: q, k, v whole in shared memory, keys/values the
// layer's cache ([T][E]); this position's key and value are stored in it here. Lane l owns the
// channels d = l % E + 32 j (l + 32 j when E does not divide the warp) of head d / HD; when E
// divides the warp into G > 1 groups, group g = l / E visits the older positions t = g, g + G, ...
// and shuffles merge the groups' sums; group 0 writes out[d] (shared memory). The softmax weights
// are taken in base 2 relative to this position's own score (so that it weighs exactly 1 and no
// maximum is needed: one exponential a position); where a sum of weights reaches 2^64 (older
// scores about 64 above this one) larger ones could overflow, so the warp then takes them again
// relative to the running maximum (mg_l_softmax). The same quantities as the reference's,
// rounded differently; only positions 0..pos are visited.
template <int E, int H>
__device__ __forceinline__ void mg_l_attention(float* keys, float* values, const float* q, const float* k,
                                               const float* v, float* out, int pos) {
    constexpr int G = E <= 32 && 32 % E == 0 ? 32 / E : 1;
    constexpr int D = G > 1 ? 1 : MG_LANE_STEPS(E);
    const int lane = threadIdx.x & 31;
    const int g = G > 1 ? lane / E : 0;
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        if (g == 0 && d < E) {
            keys[pos * E + d] = k[d];
            values[pos * E + d] = v[d];
        }
    }
    float l[D], acc[D];
    mg_l_softmax<E, H, false>(keys, values, q, k, v, pos, l, acc);
    bool big = false;
    #pragma unroll
    for (int j = 0; j < D; j++) big |= !(l[j] < 0x1p64f);  // NaN included
    if (__any_sync(MG_FULL, big)) mg_l_softmax<E, H, true>(keys, values, q, k, v, pos, l, acc);
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        if (g == 0 && d < E) out[d] = __fdividef(acc[j], l[j]);  // 1 <= l < 2^126
    }
}

// The canonical draw by the lane ops, from lane-owned logits (logit lane + 32 k in lg[k]); a and b:
// shared memory for MG_VOCAB floats each, 16-byte aligned. The maximum of the logits read whole,
// each lane's exponentials exp((l_i - max) / T) (as exp2f), then every lane reads those whole and takes their
// total, and for each logit it owns the running sum up to it, both as trees of pairs (short
// chains); a ballot finds the first logit below BOS whose running sum exceeds r times the total
// (BOS when none does). The same draw as mg_sample's unless r lies within rounding of a boundary.
template <int V>
__device__ __forceinline__ int mg_l_sample(const float (&lg)[MG_LANE_STEPS(V)], float* a, float* b, float r) {
    constexpr int K = MG_LANE_STEPS(V);
    const int lane = threadIdx.x & 31;
    const float it2 = mg_inv_temperature * MG_LOG2E;  // exp(x / T) = exp2(x log2(e) / T)
    float all[V], e[K];
    mg_w_share(a, lg, all);
    const float m = mg_tree_max<V>(all);
    #pragma unroll
    for (int k = 0; k < K; k++) e[k] = exp2f((lg[k] - m) * it2);
    mg_w_share(b, e, all);
    const float rt = r * mg_tree_sum<V>(all);
    #pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = lane + 32 * k;
        float upto[V];
        #pragma unroll
        for (int j = 0; j < V; j++) upto[j] = j <= i ? all[j] : 0.0f;
        const unsigned over = __ballot_sync(MG_FULL, i < V - 1 && mg_tree_sum<V>(upto) > rt);
        if (over != 0) return 32 * k + __ffs(over) - 1;
    }
    return V - 1;
}

// y = W x for one thread, W stored transposed ([COLS][ROWS]): column by column, so that with QUADS
// (ROWS and the offset multiples of 4) four rows come in one 16-byte load. Each y[r] still sums
// c = 0..COLS-1 in order, as the reference does.
template <int ROWS, int COLS, bool QUADS>
__device__ __forceinline__ void mg_t_matvec(const float* __restrict__ wt, const float* x, float* y) {
    #pragma unroll
    for (int r = 0; r < ROWS; r++) y[r] = 0.0f;
    #pragma unroll
    for (int c = 0; c < COLS; c++) {
        if constexpr (QUADS) {
            #pragma unroll
            for (int r = 0; r < ROWS; r += 4) {
                const float4 q = *reinterpret_cast<const float4*>(wt + c * ROWS + r);
                y[r] = fmaf(q.x, x[c], y[r]);
                y[r + 1] = fmaf(q.y, x[c], y[r + 1]);
                y[r + 2] = fmaf(q.z, x[c], y[r + 2]);
                y[r + 3] = fmaf(q.w, x[c], y[r + 3]);
            }
        } else {
            #pragma unroll
            for (int r = 0; r < ROWS; r++) y[r] = fmaf(wt[c * ROWS + r], x[c], y[r]);
        }
    }
}

// `up · x → h; relu(h); down · h → y` for one thread, four hidden units at a time, so that the
// hidden vector never lives in registers (it would not fit beside the rest at larger shapes).
// up: [COLS][HIDDEN], down: [HIDDEN][ROWS] (transposed). h_j sums c in order and y[r] sums j in
// order, as the reference does.
template <int ROWS, int COLS, int HIDDEN, bool QUADS>
__device__ __forceinline__ void mg_t_mlp(const float* __restrict__ up, const float* __restrict__ down,
                                         const float* x, float* y) {
    #pragma unroll
    for (int r = 0; r < ROWS; r++) y[r] = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < HIDDEN; j += 4) {
        float h[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) h[k] = 0.0f;
        #pragma unroll
        for (int c = 0; c < COLS; c++) {
            if constexpr (QUADS) {
                const float4 q = *reinterpret_cast<const float4*>(up + c * HIDDEN + j);
                h[0] = fmaf(q.x, x[c], h[0]);
                h[1] = fmaf(q.y, x[c], h[1]);
                h[2] = fmaf(q.z, x[c], h[2]);
                h[3] = fmaf(q.w, x[c], h[3]);
            } else {
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    if (j + k < HIDDEN) h[k] = fmaf(up[c * HIDDEN + j + k], x[c], h[k]);
                }
            }
        }
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            if (QUADS || j + k < HIDDEN) {
                const float hk = fmaxf(h[k], 0.0f);
                const float* d = down + (j + k) * ROWS;
                if constexpr (QUADS) {
                    #pragma unroll
                    for (int r = 0; r < ROWS; r += 4) {
                        const float4 q = *reinterpret_cast<const float4*>(d + r);
                        y[r] = fmaf(q.x, hk, y[r]);
                        y[r + 1] = fmaf(q.y, hk, y[r + 1]);
                        y[r + 2] = fmaf(q.z, hk, y[r + 2]);
                        y[r + 3] = fmaf(q.w, hk, y[r + 3]);
                    }
                } else {
                    #pragma unroll
                    for (int r = 0; r < ROWS; r++) y[r] = fmaf(d[r], hk, y[r]);
                }
            }
        }
    }
}

// Stores one thread's key or value vector as position `pos` of a cache ([T][E], stride S), in
// shared memory (`shared`, [P][E]) when pos < P.
template <int E, int S, int P>
__device__ __forceinline__ void mg_t_cache_store(float* cache, float* shared, const float* x, int pos) {
    if (P > 0 && pos < P) {
        #pragma unroll
        for (int i = 0; i < E; i++) shared[(pos * E + i) * S] = x[i];
    } else {
        #pragma unroll
        for (int i = 0; i < E; i++) cache[(pos * E + i) * S] = x[i];
    }
}

// One position of mg_t_attention, from shared or global memory: keys/values point at element 0 of
// the position (stride S); the scores come out in base 2 (Wq carries log2(e), see arrange).
template <int E, int H, int S>
__device__ __forceinline__ void mg_t_attend(const float* keys, const float* values, const float* q, float* m, float* l,
                                            float* out) {
    constexpr int HD = E / H;
    float kt[E], vt[E];
    #pragma unroll
    for (int i = 0; i < E; i++) {
        kt[i] = keys[i * S];
        vt[i] = values[i * S];
    }
    #pragma unroll
    for (int h = 0; h < H; h++) {
        float d = 0.0f;
        #pragma unroll
        for (int j = 0; j < HD; j++) d = fmaf(q[h * HD + j], kt[h * HD + j], d);
        const float mn = fmaxf(m[h], d);
        const float c = exp2f(m[h] - mn);  // 0 at t = 0, 1 while the maximum holds
        const float p = exp2f(d - mn);
        l[h] = fmaf(l[h], c, p);
        #pragma unroll
        for (int j = 0; j < HD; j++) out[h * HD + j] = fmaf(out[h * HD + j], c, p * vt[h * HD + j]);
        m[h] = mn;
    }
}

// The same attention for one thread, with this position's key and value already stored
// (mg_t_cache_store); keys/values element (t, i) at [(t * E + i) * S] for positions t >= P,
// skeys/svalues (shared memory) at the same offsets for t < P. One pass over the positions (the
// shared ones unrolled, then a loop two at a time rather than code unrolled over the whole block)
// with every head's softmax taken online, in base 2: a running maximum, the sum and the weighted
// values rescaled whenever the maximum grows, divided by the sum at the end. The same quantities as
// the reference's, rounded differently; few registers (no scores kept), and only positions 0..pos
// are visited.
template <int E, int H, int S, int P>
__device__ __forceinline__ void mg_t_attention(const float* keys, const float* values, const float* skeys,
                                               const float* svalues, const float* q, float* out, int pos) {
    constexpr int HD = E / H;
    float m[H], l[H];
    #pragma unroll
    for (int h = 0; h < H; h++) {
        m[h] = MG_NEG_INF;
        l[h] = 0.0f;
    }
    #pragma unroll
    for (int i = 0; i < E; i++) out[i] = 0.0f;
    #pragma unroll
    for (int t = 0; t < P; t++) {
        if (t <= pos) mg_t_attend<E, H, S>(skeys + t * E * S, svalues + t * E * S, q, m, l, out);
    }
    #pragma unroll 2
    for (int t = P; t <= pos; t++) mg_t_attend<E, H, S>(keys + t * E * S, values + t * E * S, q, m, l, out);
    #pragma unroll
    for (int h = 0; h < H; h++) {
        #pragma unroll
        for (int j = 0; j < HD; j++) out[h * HD + j] = out[h * HD + j] / l[h];
    }
}

"#;

/// The whole-step and whole-stream kernels.
const KERNELS: &str = r#"
// The weights a block reads: copied into its shared memory when they fit (MG_WEIGHTS_SHARED),
// else the global copy. Every thread of the block must call it.
__device__ __forceinline__ const float* mg_block_weights(const float* __restrict__ wg, float* smem) {
    if (MG_WEIGHTS_SHARED > 0) {
        for (int i = threadIdx.x; i < MG_WEIGHTS; i += blockDim.x) smem[i] = wg[i];
    }
    __syncthreads();
    return MG_WEIGHTS_SHARED > 0 ? smem : wg;
}

// The stream loop's advance (Stream::advance): after drawing `next`, restart at BOS, position 0,
// when it is BOS or the block is full, else feed it back.
__device__ __forceinline__ void mg_advance(int next, int* tok, int* pos) {
    if (next == MG_BOS || *pos + 1 == MG_BLOCK) {
        *tok = MG_BOS;
        *pos = 0;
    } else {
        *tok = next;
        *pos += 1;
    }
}

// Sets the sampling temperature of every kernel of this module.
extern "C" __global__ void mg_set_temperature(float t) { mg_inv_temperature = 1.0f / t; }

// One teacher-forced step by one warp (launch <<<1, 32>>>); s: a global scratch of MG_SCRATCH
// floats that keeps the KV cache between launches. The logits stay at s + MG_S_LOGITS.
extern "C" __global__ void mg_warp_step(const float* __restrict__ w, float* s, int tok, int pos, float r, int* next) {
    const int drawn = mg_step_warp(w, s, tok, pos, r);
    if (threadIdx.x == 0) *next = drawn;
}

// The same step by the lane ops (mg_step_lanes): the teacher-forced checks of mg_persistent.
// s: a global scratch of MG_LANE_SCRATCH floats.
extern "C" __global__ void mg_lanes_step(const float* __restrict__ w, float* s, int tok, int pos, float r, int* next) {
    const int drawn = mg_step_lanes(w, s, tok, pos, r, s + MG_S_LOGITS);
    if (threadIdx.x == 0) *next = drawn;
}

// The same from the prefix table (mg_step_lanes_table): the checks of mg_persistent_table.
extern "C" __global__ void mg_lanes_table_step(const float* __restrict__ w, float* s, int tok, int pos, float r,
                                               int* next) {
    const int drawn = mg_step_lanes_table(w, s, tok, pos, r, s + MG_S_LOGITS);
    if (threadIdx.x == 0) *next = drawn;
}

// Whole benchmark streams, one per warp, `steps` steps each, by the lane ops (LANES) or the warp
// ops, the weights copied into shared memory where they fit, or (TABLE: the lane ops from the
// prefix table that follows the weights) weights and table read from global memory through the
// read-only data cache. state: (tok, pos, rng) per stream; kv: MG_KV floats per stream, loaded at
// the start and saved at the end so that consecutive launches continue the same streams.
// checksums: Stream::run's checksum of this launch.
template <bool LANES, bool TABLE = false>
__device__ __forceinline__ void mg_warp_streams(const float* __restrict__ wg, unsigned* state, float* kv, int streams,
                                                long long steps, unsigned long long* checksums) {
    static_assert(!TABLE || LANES, "the prefix table steps are lane steps");
    extern __shared__ __align__(16) float smem[];
    const float* w = TABLE ? wg : mg_block_weights(wg, smem);
    const int lane = threadIdx.x & 31;
    const int stream = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (stream >= streams) return;
    float* s = smem + (TABLE ? 0 : MG_WEIGHTS_SHARED) + (threadIdx.x >> 5) * (LANES ? MG_LANE_SCRATCH : MG_SCRATCH);
    for (int i = lane; i < MG_KV; i += 32) s[MG_S_KV + i] = kv[(long long)stream * MG_KV + i];
    __syncwarp();
    int tok = (int)state[3 * stream], pos = (int)state[3 * stream + 1];
    unsigned rng = state[3 * stream + 2];
    unsigned long long sum = 0;
    for (long long n = 0; n < steps; n++) {
        rng = mg_xorshift32(rng);
        const float u = mg_uniform24(rng);
        int next;
        if constexpr (LANES && TABLE) {
            next = mg_step_lanes_table(w, s, tok, pos, u, 0);
        } else if constexpr (LANES) {
            next = mg_step_lanes(w, s, tok, pos, u, 0);
        } else {
            next = mg_step_warp(w, s, tok, pos, u);
        }
        sum = sum * 31ull + (unsigned long long)next;
        mg_advance(next, &tok, &pos);
    }
    for (int i = lane; i < MG_KV; i += 32) kv[(long long)stream * MG_KV + i] = s[MG_S_KV + i];
    if (lane == 0) {
        state[3 * stream] = (unsigned)tok;
        state[3 * stream + 1] = (unsigned)pos;
        state[3 * stream + 2] = rng;
        checksums[stream] = sum;
    }
}

// One warp alone (launch <<<1, 32>>>), by the lane ops: as many registers as the compiler likes,
// to keep loads in flight along the one dependency chain.
extern "C" __global__ void __launch_bounds__(32, 1) mg_persistent(const float* __restrict__ wg, unsigned* state, float* kv,
                                                                  int streams, long long steps,
                                                                  unsigned long long* checksums) {
    mg_warp_streams<true>(wg, state, kv, streams, steps, checksums);
}

// The same from the prefix table that follows the weights (mg_step_lanes_table): each step
// starts after the ops that depend on (tok, pos) alone, from their results, read in one row.
// Weights and table are read from global memory (const __restrict__: the read-only data cache).
// Nothing in the loop writes them, so the compiler may load a lane's weights once, before the
// loop, and keep them in registers.
extern "C" __global__ void __launch_bounds__(32, 1) mg_persistent_table(const float* __restrict__ wg, unsigned* state,
                                                                        float* kv, int streams, long long steps,
                                                                        unsigned long long* checksums) {
    mg_warp_streams<true, true>(wg, state, kv, streams, steps, checksums);
}

// Many warps, MG_WARPS_PER_BLOCK per block: registers capped so that as many blocks fit on an SM
// as its shared memory allows (MG_WARP_BLOCKS_PER_SM).
extern "C" __global__ void __launch_bounds__(32 * MG_WARPS_PER_BLOCK, MG_WARP_BLOCKS_PER_SM)
    mg_streams_warp(const float* __restrict__ wg, unsigned* state, float* kv, int streams, long long steps,
                    unsigned long long* checksums) {
    mg_warp_streams<false>(wg, state, kv, streams, steps, checksums);
}

// One teacher-forced step by one thread (launch <<<1, 1>>>); kv: MG_KV floats kept between
// launches; logits: MG_VOCAB floats out.
extern "C" __global__ void mg_thread_step(const float* __restrict__ w, float* kv, int tok, int pos, float r,
                                          float* logits, int* next) {
    *next = mg_step_thread<1, 0>(w, kv, 0, tok, pos, r, logits);
}

// Not inlined into the token loop: inlined, the compiler hoists the step's weight loads out of the
// loop (they do not change from token to token) and runs out of registers.
__device__ __noinline__ int mg_step_thread_call(const float* __restrict__ w, float* kv, float* skv, int tok, int pos,
                                               float r) {
    return mg_step_thread<MG_STREAM_THREADS, MG_KV_SHARED_POSITIONS>(w, kv, skv, tok, pos, r, 0);
}

// Copies the first MG_KV_SHARED_POSITIONS positions of one thread's KV cache between global memory
// (kv) and the block's shared memory (skv), in mg_step_thread's layouts.
template <bool TO_SHARED>
__device__ __forceinline__ void mg_kv_shared_copy(float* kv, float* skv) {
    constexpr int N = MG_KV_SHARED_POSITIONS * MG_EMBD;
    if constexpr (N > 0) {
        #pragma unroll 1
        for (int j = 0; j < 2 * MG_LAYERS * N; j++) {
            float* g = kv + ((j / N) * MG_BLOCK * MG_EMBD + j % N) * MG_STREAM_THREADS;
            float* sh = skv + j * MG_STREAM_THREADS;
            if (TO_SHARED) {
                *sh = *g;
            } else {
                *g = *sh;
            }
        }
    }
}

// Whole benchmark streams, one per thread, in blocks of MG_STREAM_THREADS threads; kv: MG_KV
// floats per stream, interleaved within a block: element j of the stream of thread i of block b at
// [(b * MG_KV + j) * MG_STREAM_THREADS + i]. The first MG_KV_SHARED_POSITIONS positions, the most
// read, live in the block's shared memory during the launch (after the weights,
// interleaved the same way), copied in at the start and back at the end. state and checksums as
// mg_persistent's.
extern "C" __global__ void mg_streams(const float* __restrict__ wg, unsigned* state, float* kv, int streams,
                                      long long steps, unsigned long long* checksums) {
    extern __shared__ __align__(16) float smem[];
    const float* w = mg_block_weights(wg, smem);
    const int stream = blockIdx.x * MG_STREAM_THREADS + threadIdx.x;
    if (stream >= streams) return;
    float* my_kv = kv + (long long)blockIdx.x * MG_KV * MG_STREAM_THREADS + threadIdx.x;
    float* skv = smem + MG_WEIGHTS_SHARED + threadIdx.x;
    mg_kv_shared_copy<true>(my_kv, skv);
    int tok = (int)state[3 * stream], pos = (int)state[3 * stream + 1];
    unsigned rng = state[3 * stream + 2];
    unsigned long long sum = 0;
    for (long long n = 0; n < steps; n++) {
        rng = mg_xorshift32(rng);
        const int next = mg_step_thread_call(w, my_kv, skv, tok, pos, mg_uniform24(rng));
        sum = sum * 31ull + (unsigned long long)next;
        mg_advance(next, &tok, &pos);
    }
    mg_kv_shared_copy<false>(my_kv, skv);
    state[3 * stream] = (unsigned)tok;
    state[3 * stream + 1] = (unsigned)pos;
    state[3 * stream + 2] = rng;
    checksums[stream] = sum;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_plan_keeps_every_tensor_at_its_canonical_offset() {
        for shape in [Shape::DEFAULT, Shape::new(11, 8, 12, 3, 3, 20).unwrap()] {
            let plan = weight_plan(&shape);
            let layout = Layout::new(shape);
            assert_eq!(plan.total, layout.param_count(), "{shape}");
            for t in layout.tensors() {
                let placed = plan.get(t.param);
                assert_eq!(
                    (placed.offset, placed.len),
                    (t.offset, t.len()),
                    "{shape} {}",
                    t.param
                );
                let columns = matches!(placed.arrangement, Arrangement::Columns { .. });
                assert_eq!(columns, transposed(t.param), "{shape} {}", t.param);
            }
        }
    }

    #[test]
    fn every_op_has_a_kernel_and_a_line_in_both_steps() {
        for shape in [
            Shape::default(),
            Shape::parse("embd=32,layers=2,mlp=128").unwrap(),
        ] {
            let src = render(&shape);
            let ops = Program::forward(shape).ops().len();
            assert_eq!(src.op_kernels.len(), ops);
            for k in src.kernels() {
                // `extern "C" __global__ void [__launch_bounds__(..)] k(`
                let at = src.text.find(&format!(" {k}(")).expect(&k);
                let head = &src.text[src.text[..at].rfind('\n').unwrap_or(0)..at];
                let head = if head.contains("__global__") {
                    head
                } else {
                    &src.text[src.text[..at - head.len()].rfind('\n').unwrap_or(0)..at]
                };
                assert!(head.contains("extern \"C\" __global__ void"), "{k}: {head}");
            }
            // The thread step stores every layer's key and value vectors in the cache.
            assert_eq!(
                src.text.matches("    mg_t_cache_store<").count(),
                2 * shape.layers
            );
            for op in Program::forward(shape).ops() {
                assert!(src.text.matches(&format!("// {op}")).count() >= 2, "{op}");
            }
        }
    }

    #[test]
    fn arrange_transposes_matrices_only_and_scales_the_queries() {
        let shape = Shape::parse("layers=2").unwrap();
        let w = Weights::random(shape, 3, 0.5);
        let a = arrange(&w);
        let layout = w.layout();
        let wte = layout.tensor(Param::Wte).range();
        assert_eq!(a[wte.clone()], w.data()[wte]);
        let scale = base2_query_scale(&shape);
        for (param, by) in [
            (Param::Fc1(0), 1.0),
            (Param::Wq(0), scale),
            (Param::Wq(1), scale),
            (Param::Wk(1), 1.0),
        ] {
            let t = layout.tensor(param);
            let (rows, cols) = (t.rows, t.cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        a[t.offset + c * rows + r],
                        w.data()[t.offset + r * cols + c] * by,
                        "{param:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_prefix_table_follows_the_weights_with_the_reference_buffers() {
        // embd 18: every buffer of a row padded to 16 bytes; 3 heads, two layers (the table holds
        // the first layer's q, k, v and the residual).
        let shape = Shape::parse("embd=18,heads=3,layers=2").unwrap();
        let w = Weights::random(shape, 7, 0.4);
        let src = render(&shape);
        let define = |name: &str| -> usize {
            let line = src
                .text
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap();
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        let (at, row) = (define("MG_TABLE"), define("MG_TABLE_ROW"));
        let d = device_floats(&w);
        assert_eq!(d.len(), define("MG_DEVICE_FLOATS"));
        assert_eq!(d[..w.data().len()], arrange(&w)[..]);
        assert_eq!((at % 4, row), (0, 4 * 20));
        let mut r = microgpt_runtime::Reference::<f32>::new(&w);
        let (tok, pos) = (11, 5);
        let prefix = Program::forward(shape).history_free_prefix();
        r.run_ops(tok, pos, prefix.ops, &mut ());
        let got = &d[at + (tok * shape.block + pos) * row..][..row];
        let q: Vec<f32> = r
            .buffer(Buffer::Q)
            .iter()
            .map(|v| v * base2_query_scale(&shape))
            .collect();
        for (b, want, from) in [
            (Buffer::Q, &q[..], 0),
            (Buffer::K, r.buffer(Buffer::K), 20),
            (Buffer::V, r.buffer(Buffer::V), 40),
            (Buffer::X, r.buffer(Buffer::X), 60),
        ] {
            assert_eq!(&got[from..from + 18], want, "{b:?}");
            assert_eq!(&got[from + 18..from + 20], [0.0; 2], "{b:?} padding");
        }
        assert!(
            src.text
                .contains("// ops 0..6 from the prefix table: q at 0, k at 20, v at 40, x at 60\n")
        );
    }

    #[test]
    fn every_scratch_region_is_16_byte_aligned() {
        // The kernels read the scratch's vectors four floats at a time; odd sizes (a KV cache of
        // 30 floats here) must not shift what follows.
        for shape in [
            "",
            "embd=5,heads=1,block=3,mlp=8",
            "embd=18,heads=3,mlp=202",
            "vocab=3,embd=4,heads=1",
        ] {
            let src = render(&Shape::parse(shape).unwrap());
            let offsets: Vec<(&str, usize)> = src
                .text
                .lines()
                .filter_map(|l| l.strip_prefix("#define MG_S_"))
                .map(|l| {
                    let (name, value) = l.split_once(' ').unwrap();
                    (name, value.parse().unwrap())
                })
                .collect();
            assert!(offsets.len() >= Buffer::ALL.len() + 4, "{shape}: {offsets:?}");
            for (name, at) in offsets {
                assert!(at.is_multiple_of(4), "{shape}: MG_S_{name} at {at}");
            }
            assert!(src.scratch_floats.is_multiple_of(32));
        }
    }

    #[test]
    fn large_shapes_read_weights_from_global_memory() {
        let big = Shape::parse("embd=128,layers=4,mlp=512").unwrap();
        assert!(!render(&big).weights_in_shared());
        assert!(render(&Shape::default()).weights_in_shared());
    }

    #[test]
    fn the_stream_blocks_keep_the_first_cache_positions_in_shared_memory() {
        // Default shape: 3 positions (48 KiB for 128 streams) beside the weights, and blocks of
        // that size still fit STREAM_WARPS_PER_SM warps on an SM.
        let src = render(&Shape::default());
        assert_eq!(src.kv_shared_positions, 3);
        let blocks = STREAM_WARPS_PER_SM * 32 / STREAM_THREADS;
        assert!(blocks * src.streams_shared_bytes() <= SHARED_PER_SM);
        assert!(src.text.contains("#define MG_KV_SHARED_POSITIONS 3"));
        // A larger shape has no room left beside its weights: every position in global memory.
        let big = render(&Shape::parse("embd=32,layers=2,mlp=128").unwrap());
        assert_eq!(big.kv_shared_positions, 0);
        assert_eq!(big.streams_shared_bytes(), 4 * big.shared_weight_floats);
    }
}
