//! The interface of generated kernels: the code generators (proc-macro, JIT, …) implement
//! [`Kernel`] for each kernel they emit, and [`kernel_spec`] turns any of them into a registry
//! entry, so the glue between a generated kernel and the bench is written once.

use crate::sampler::XorShift32;
use crate::stream::Stream;
use crate::variant::{Precision, PrepareError, Settings, Variant, VariantInfo, VariantSpec};
use microgpt_model::Shape;
use microgpt_weights::Weights;

/// A kernel generated for one shape and one target: weights laid out at `prepare` time, then
/// one call per token. Every method but `prepare` may assume `prepare` succeeded, so a value of
/// a kernel type proves that this CPU supports its instructions.
pub trait Kernel: Sized + Send + 'static {
    /// Registry name, e.g. `avx512-f32`.
    const NAME: &'static str;
    /// The instruction set of the hot path, e.g. `avx512f`.
    const ISA: &'static str;
    const PRECISION: Precision;
    /// What generated it, e.g. `proc-macro`.
    const BACKEND: &'static str;

    /// The shape it was generated for.
    fn shape() -> Shape;

    /// Lays `weights` out for this kernel. Fails (with a one-line reason) when the CPU lacks a
    /// required feature or the weights have another shape.
    fn prepare(weights: &Weights, settings: &Settings) -> Result<Self, PrepareError>;

    /// One step of the stream: forward pass for `tok` at `pos` (positions `0..pos` of this
    /// sequence are cached), then a draw with the uniform `r`.
    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize;

    /// The logits of the last step, as real numbers.
    fn logits(&self) -> Vec<f32>;

    /// Runs `tokens` steps of the benchmark stream. Kernels override this to keep the loop
    /// inside their own target-feature context.
    fn run(&mut self, stream: &mut Stream, tokens: u64) -> u64 {
        stream.run(tokens, |t, p, r| self.step(t, p, r))
    }

    /// Remarks for the bench table (e.g. what was precomputed at prepare time).
    fn notes() -> Vec<String> {
        Vec::new()
    }
}

/// Checks that `weights` have the shape a kernel was generated for.
pub fn check_shape(kernel: &str, weights: &Weights, shape: Shape) -> Result<(), PrepareError> {
    if *weights.shape() == shape {
        Ok(())
    } else {
        Err(PrepareError::Other(format!(
            "{kernel} is generated for shape {shape}, the weights have {}",
            weights.shape()
        )))
    }
}

/// A generated kernel as a bench variant.
pub struct KernelVariant<K: Kernel> {
    info: VariantInfo,
    kernel: K,
    stream: Stream,
    /// Which stream of a multi-stream run this is (its seed: [`crate::stream::stream_seed`]).
    index: usize,
}

impl<K: Kernel> KernelVariant<K> {
    pub fn new(weights: &Weights, settings: &Settings) -> Result<KernelVariant<K>, PrepareError> {
        let kernel = K::prepare(weights, settings)?;
        let mut info = VariantInfo::new(K::NAME, K::BACKEND, K::ISA, K::PRECISION);
        info.notes = K::notes();
        Ok(KernelVariant {
            info,
            kernel,
            stream: Stream::new(&K::shape(), crate::sampler::DEFAULT_SEED),
            index: 0,
        })
    }

    /// Run stream `index` of a multi-stream run.
    pub fn with_stream(mut self, index: usize) -> KernelVariant<K> {
        self.index = index;
        self
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }
}

impl<K: Kernel> Variant for KernelVariant<K> {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        K::shape()
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.kernel.step(tok, pos, r)
    }

    fn logits(&self) -> Vec<f32> {
        self.kernel.logits()
    }

    fn reset(&mut self, seed: u32) {
        self.stream = Stream::new(&K::shape(), crate::stream::stream_seed(seed, self.index));
    }

    fn run(&mut self, tokens: u64) -> u64 {
        self.kernel.run(&mut self.stream, tokens)
    }
}

/// The registry entry of a generated kernel.
pub fn kernel_spec<K: Kernel>() -> VariantSpec {
    VariantSpec::new(K::NAME, K::BACKEND, K::PRECISION, |w, s| {
        Ok(Box::new(KernelVariant::<K>::new(w, s)?) as Box<dyn Variant>)
    })
    .for_shape(K::shape())
}

/// A kernel generated with one independent stream per SIMD lane: every value is a vector
/// holding that value for each of `LANES` streams, so every FMA works for all of them.
pub trait BatchKernel: Sized + Send + 'static {
    const NAME: &'static str;
    const ISA: &'static str;
    const PRECISION: Precision;
    const BACKEND: &'static str;
    /// Streams per batch.
    const LANES: usize;

    fn shape() -> Shape;

    fn prepare(weights: &Weights, settings: &Settings) -> Result<Self, PrepareError>;

    /// One step of every lane: lane `l` feeds `toks[l]` at `pos[l]` and draws with `rs[l]`; the
    /// drawn tokens go to `next`. Every slice holds `LANES` entries (u32, the width the kernels
    /// load into their lanes). Each lane's cache holds its positions `0..pos[l]` from the
    /// previous steps (the cache is a ring indexed by the step count, so consecutive steps of
    /// all lanes are all it needs).
    fn step(&mut self, toks: &[u32], pos: &[u32], rs: &[f32], next: &mut [u32]);

    /// The logits lane `lane` computed in the last step.
    fn logits(&self, lane: usize) -> Vec<f32>;

    fn notes() -> Vec<String> {
        Vec::new()
    }
}

/// A batch kernel as a variant: `LANES` benchmark streams, stream `l` seeded with
/// [`crate::stream::stream_seed`]`(seed, l)`; teacher-forced steps feed every lane the same
/// inputs and report lane 0.
///
/// The streams are kept as arrays (token, position and RNG of every lane), so that the work
/// between two steps (a draw per lane, then each lane's next input, without branches) is one
/// unrolled run of integer instructions rather than a loop over stream objects. The compiler
/// keeps it scalar; it runs on the integer units beside the kernel's vector work.
pub struct BatchVariant<K: BatchKernel> {
    info: VariantInfo,
    kernel: K,
    first_stream: usize,
    /// Every stream's next input and RNG.
    toks: Vec<u32>,
    pos: Vec<u32>,
    rngs: Vec<XorShift32>,
    /// Scratch: the draws, the drawn tokens, a teacher-forced step's inputs.
    rs: Vec<f32>,
    next: Vec<u32>,
    forced: (Vec<u32>, Vec<u32>),
}

impl<K: BatchKernel> BatchVariant<K> {
    pub fn new(weights: &Weights, settings: &Settings) -> Result<BatchVariant<K>, PrepareError> {
        let kernel = K::prepare(weights, settings)?;
        let mut info = VariantInfo::new(K::NAME, K::BACKEND, K::ISA, K::PRECISION);
        info.streams = K::LANES;
        info.notes = K::notes();
        let n = K::LANES;
        let mut v = BatchVariant {
            info,
            kernel,
            first_stream: 0,
            toks: vec![0; n],
            pos: vec![0; n],
            rngs: Vec::new(),
            rs: vec![0.0; n],
            next: vec![0; n],
            forced: (vec![0; n], vec![0; n]),
        };
        v.reset(crate::sampler::DEFAULT_SEED);
        Ok(v)
    }

    /// Number the streams from `first` (so that several batches run distinct streams).
    pub fn with_first_stream(mut self, first: usize) -> BatchVariant<K> {
        self.first_stream = first;
        self
    }
}

impl<K: BatchKernel> Variant for BatchVariant<K> {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        K::shape()
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        // Out-of-range values stay out of range (the kernel's check reports them).
        self.forced.0.fill(u32::try_from(tok).unwrap_or(u32::MAX));
        self.forced.1.fill(u32::try_from(pos).unwrap_or(u32::MAX));
        self.rs.fill(r);
        self.kernel
            .step(&self.forced.0, &self.forced.1, &self.rs, &mut self.next);
        self.next[0] as usize
    }

    fn logits(&self) -> Vec<f32> {
        self.kernel.logits(0)
    }

    fn reset(&mut self, seed: u32) {
        let shape = K::shape();
        self.toks.fill(shape.bos() as u32);
        self.pos.fill(0);
        self.rngs = (0..K::LANES)
            .map(|l| XorShift32::new(crate::stream::stream_seed(seed, self.first_stream + l)))
            .collect();
    }

    /// `tokens` rounded up to whole batch steps.
    fn run(&mut self, tokens: u64) -> u64 {
        let shape = K::shape();
        let (bos, block) = (shape.bos() as u32, shape.block as u32);
        let steps = tokens.div_ceil(K::LANES as u64);
        let l = K::LANES;
        // Slices of the constant length LANES, so that the loops below unroll without bounds
        // checks; one checksum per lane, so that no chain runs across the lanes.
        let (toks, pos) = (&mut self.toks[..l], &mut self.pos[..l]);
        let (rs, next, rngs) = (&mut self.rs[..l], &mut self.next[..l], &mut self.rngs[..l]);
        let mut sums = vec![0u32; l];
        let sums = &mut sums[..l];
        for _ in 0..steps {
            for (r, rng) in rs.iter_mut().zip(rngs.iter_mut()) {
                *r = rng.uniform();
            }
            self.kernel.step(toks, pos, rs, next);
            for ((tok, pos), (&n, sum)) in toks
                .iter_mut()
                .zip(pos.iter_mut())
                .zip(next.iter().zip(sums.iter_mut()))
            {
                *sum = sum.wrapping_mul(31).wrapping_add(n);
                (*tok, *pos) = crate::stream::next_input(bos, block, *pos, n);
            }
        }
        sums.iter()
            .fold(0u64, |a, &s| a.wrapping_mul(31).wrapping_add(s as u64))
    }
}

/// The registry entry of a batch kernel.
pub fn batch_spec<K: BatchKernel>() -> VariantSpec {
    VariantSpec::new(K::NAME, K::BACKEND, K::PRECISION, |w, s| {
        Ok(Box::new(BatchVariant::<K>::new(w, s)?) as Box<dyn Variant>)
    })
    .for_shape(K::shape())
}

/// Element types generated kernels keep in [`Aligned`] buffers: plain numbers for which all-zero
/// bytes are a valid zero.
pub trait Element: Copy + Default + Send + Sync + 'static + sealed::Sealed {}
impl Element for f32 {}
impl Element for i16 {}
impl Element for i32 {}
impl Element for u8 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i16 {}
    impl Sealed for i32 {}
    impl Sealed for u8 {}
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A zero-initialised buffer aligned to 64 bytes (a cache line, a zmm register), padded to a
/// whole number of 64-byte lines. Generated kernels read it through raw pointers at offsets fixed
/// at generation time; [`Aligned::len`] is what they may read.
pub struct Aligned<T: Element> {
    lines: Box<[Line]>,
    len: usize,
    _element: std::marker::PhantomData<T>,
}

impl<T: Element> Aligned<T> {
    pub fn zeroed(len: usize) -> Aligned<T> {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64).max(1)].into_boxed_slice(),
            len,
            _element: std::marker::PhantomData,
        }
    }

    pub fn from_slice(values: &[T]) -> Aligned<T> {
        let mut a = Aligned::zeroed(values.len());
        a.as_mut_slice().copy_from_slice(values);
        a
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const T {
        self.lines.as_ptr().cast()
    }

    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.lines.as_mut_ptr().cast()
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` elements of `T`, suitably aligned (64 ≥ align_of
        // T), and every bit pattern of the zeroed or written bytes is a valid `T` (Element).
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
}

impl<T: Element> Clone for Aligned<T> {
    fn clone(&self) -> Aligned<T> {
        Aligned::from_slice(self.as_slice())
    }
}

/// Weight layouts generated kernels ask for at prepare time: the weight plan and the fp32 fold
/// (re-exported, so that generated code names one path), and the prefix tables, which the
/// reference engines evaluate.
pub mod layout {
    use crate::reference::{Q412Reference, Reference};
    use microgpt_model::Buffer;
    pub use microgpt_model::plan::*;
    use microgpt_weights::Weights;
    pub use microgpt_weights::folded_f32;

    /// The history-free prefix of the forward pass
    /// ([`microgpt_model::Program::history_free_prefix`]) evaluated by the fp32 reference for
    /// every `(tok, pos)`: row `tok · block + pos` holds the live buffers in order, each padded
    /// with zeros to a multiple of `pad`.
    pub fn prefix_table_f32(weights: &Weights, pad: usize) -> Vec<f32> {
        let mut engine = Reference::<f32>::new(weights);
        prefix_table(weights, pad, |tok, pos, count, buffers| {
            engine.run_ops(tok, pos, count, &mut ());
            buffers.iter().map(|&b| engine.buffer(b).to_vec()).collect()
        })
    }

    /// As [`prefix_table_f32`], evaluated by the scalar Q4.12 reference (exact integers).
    pub fn prefix_table_q412(weights: &Weights, pad: usize) -> Vec<i16> {
        let mut engine = Q412Reference::new(weights);
        prefix_table(weights, pad, |tok, pos, count, buffers| {
            engine.run_ops(tok, pos, count);
            buffers.iter().map(|&b| engine.buffer(b).to_vec()).collect()
        })
    }

    /// The elements of one table row: each live buffer padded to a multiple of `pad`.
    pub fn prefix_row_len(weights: &Weights, pad: usize) -> usize {
        PrefixRow::new(weights.shape(), pad).len
    }

    fn prefix_table<T: Copy + Default>(
        weights: &Weights,
        pad: usize,
        mut eval: impl FnMut(usize, usize, usize, &[Buffer]) -> Vec<Vec<T>>,
    ) -> Vec<T> {
        let shape = *weights.shape();
        let row = PrefixRow::new(&shape, pad);
        let buffers: Vec<Buffer> = row.live.iter().map(|&(b, _)| b).collect();
        let mut out = vec![T::default(); shape.vocab * shape.block * row.len];
        for tok in 0..shape.vocab {
            for pos in 0..shape.block {
                let values = eval(tok, pos, row.ops, &buffers);
                let start = (tok * shape.block + pos) * row.len;
                for (v, &(_, at)) in values.iter().zip(&row.live) {
                    out[start + at..][..v.len()].copy_from_slice(v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::layout::*;
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        let a = Aligned::<f32>::zeroed(27);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(a.as_slice(), &[0.0; 27]);
        let b = Aligned::from_slice(&[1i16, 2, 3]);
        assert_eq!(b.clone().as_slice(), &[1, 2, 3]);
    }

    #[test]
    fn prefix_table_rows_hold_the_reference_buffers() {
        use crate::Reference;
        use microgpt_model::{Buffer, Shape};
        let w = microgpt_weights::Weights::random(Shape::DEFAULT, 5, 0.3);
        let table = prefix_table_f32(&w, 16);
        assert_eq!(prefix_row_len(&w, 16), 64);
        let mut r = Reference::<f32>::new(&w);
        let (tok, pos) = (7, 9);
        r.run_ops(tok, pos, 6, &mut ());
        let row = &table[(tok * 16 + pos) * 64..][..64];
        assert_eq!(&row[..16], r.buffer(Buffer::Q));
        assert_eq!(&row[48..], r.buffer(Buffer::X));
    }
}
