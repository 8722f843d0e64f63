//! Several copies of a variant, one per core, each with its own streams.

use crate::variant::{PrepareError, Settings, Variant, VariantInfo, VariantSpec};
use microgpt_model::Shape;
use microgpt_weights::Weights;

/// Builds copy `index` of a variant (its streams numbered from `index · streams`).
pub type Build = dyn Fn(&Weights, &Settings, usize) -> Result<Box<dyn Variant>, PrepareError> + Send + Sync;

/// `copies` instances of a variant run on as many threads: every stream independent (own
/// cache, own xorshift32 seeded per stream), tokens split evenly.
pub struct Threaded {
    info: VariantInfo,
    copies: Vec<Box<dyn Variant>>,
}

impl Threaded {
    pub fn new(
        weights: &Weights,
        settings: &Settings,
        copies: usize,
        build: &Build,
    ) -> Result<Threaded, PrepareError> {
        let copies: Vec<Box<dyn Variant>> = (0..copies.max(1))
            .map(|i| build(weights, settings, i))
            .collect::<Result<_, _>>()?;
        let first = copies[0].info();
        let mut info = first.clone();
        info.name = format!("{}-{}t", first.name, copies.len());
        info.streams = first.streams * copies.len();
        info.threads = copies.len();
        Ok(Threaded { info, copies })
    }
}

impl Variant for Threaded {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        self.copies[0].shape()
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.copies[0].step(tok, pos, r)
    }

    fn logits(&self) -> Vec<f32> {
        self.copies[0].logits()
    }

    fn reset(&mut self, seed: u32) {
        for c in &mut self.copies {
            c.reset(seed);
        }
    }

    fn run(&mut self, tokens: u64) -> u64 {
        // Unoptimised builds of the generated kernels keep every temporary on the stack; a
        // worker gets the main thread's usual 8 MiB rather than the 2 MiB default.
        const STACK_BYTES: usize = 8 << 20;
        let share = tokens.div_ceil(self.copies.len() as u64);
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .copies
                .iter_mut()
                .map(|c| {
                    std::thread::Builder::new()
                        .stack_size(STACK_BYTES)
                        .spawn_scoped(scope, move || c.run(share))
                        .expect("cannot start a stream thread")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a stream thread panicked"))
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b))
        })
    }

    fn names(&mut self, count: usize, seed: u32) -> Vec<String> {
        self.copies[0].names(count, seed)
    }
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A registry entry running `spec`'s variant on every core; `build` makes copy `i`.
pub fn threaded_spec(
    name: &str,
    backend: &str,
    precision: crate::Precision,
    shape: Option<Shape>,
    build: impl Fn(&Weights, &Settings, usize) -> Result<Box<dyn Variant>, PrepareError> + Send + Sync + 'static,
) -> VariantSpec {
    let n = cores();
    let mut spec = VariantSpec::new(format!("{name}-{n}t"), backend, precision, move |w, s| {
        Ok(Box::new(Threaded::new(w, s, n, &build)?) as Box<dyn Variant>)
    });
    spec.threads = n;
    match shape {
        Some(shape) => spec.for_shape(shape),
        None => spec,
    }
}
