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
//! Weights are uploaded in [`arrange`]'s order (the weight plan): the canonical layout with every
//! matrix but the embeddings transposed to `[in][out]`, so that the lanes (or the unrolled loops)
//! reading row `r` of `W·x` touch consecutive words, and the query weights multiplied by
//! [`base2_query_scale`] (the attention's `1/√head_dim` and `log2(e)`), so that the scores come
//! out in base 2 with no multiply on the device; the prefix table follows them in the same buffer
//! ([`device_floats`]).
//!
//! Streams follow [`Stream`]: BOS at position 0, restart after drawing BOS or filling the block;
//! stream `s` of a run with seed `seed` starts from [`stream_seed`]`(seed, s)`. The per-launch
//! checksum is [`Stream::run`]'s.
//!
//! [`base2_query_scale`]: microgpt_model::numerics::base2_query_scale
//! [`Stream`]: microgpt_runtime::stream::Stream
//! [`stream_seed`]: microgpt_runtime::stream::stream_seed
//! [`Stream::run`]: microgpt_runtime::stream::Stream::run

#[cfg(feature = "cuda")]
pub mod host;
mod lane;
mod plan;
mod source;
mod thread;
mod warp;

pub use plan::{arrange, device_floats};
pub use source::render;

use microgpt_model::Shape;
use microgpt_runtime::VariantSpec;
use plan::{block_shared_bytes, kv_position_floats};

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
/// only for rows in range, which keeps them in the loop: unconditional loads of that many
/// weights spill registers.
pub const HOIST_WEIGHTS_PER_LANE: usize = 160;

/// Threads per block of `mg_streams`; the KV caches of a block interleave with this stride, so
/// that every cache access has a constant offset from the thread's base address.
pub const STREAM_THREADS: usize = 128;

/// Warps per SM that `mg_streams`'s shared memory is planned for: each block keeps the first
/// positions of its streams' KV caches in shared memory, as many as fit beside the weights when
/// this many warps share an SM: fewer warps with more of their caches in shared memory beat more
/// warps (the measurements are in docs/results.md).
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

/// NVRTC's options for every source, besides `--gpu-architecture` (see the module docs).
pub const NVRTC_OPTIONS: [&str; 2] = ["--std=c++17", "--ftz=true"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{transposed, weight_plan};
    use microgpt_model::numerics::base2_query_scale;
    use microgpt_model::plan::Arrangement;
    use microgpt_model::{Buffer, Layout, Param, Program};
    use microgpt_weights::Weights;

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
