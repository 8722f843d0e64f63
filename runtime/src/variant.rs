//! Variants: every way of running the model (a backend, an ISA, a precision) behind one trait,
//! and the registry entries the bench walks.

use crate::Real;
use crate::reference::{Q412Reference, Reference};
use crate::sampler::Sampler;
use crate::stream::{Stream, generate_names};
pub use microgpt_model::Precision;
use microgpt_model::{Shape, detokenize};
use microgpt_weights::Weights;
use std::fmt;

/// What a variant is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oracle {
    /// The scalar reference in f64.
    F64Reference,
    /// The scalar reference in f32: the oracle of every fp32 variant.
    F32Reference,
    /// The scalar Q4.12 reference: the oracle of every Q4.12 variant.
    Q412Reference,
    /// Checked elsewhere (e.g. against hardware test vectors); the string says where.
    Elsewhere(&'static str),
}

impl Oracle {
    /// The usual oracle of a precision.
    pub fn for_precision(p: Precision) -> Oracle {
        match p {
            Precision::F64 => Oracle::Elsewhere("golden logits (tests)"),
            Precision::F32 => Oracle::F32Reference,
            Precision::Q412 => Oracle::Q412Reference,
            Precision::Integer => Oracle::Elsewhere("hardware test vectors (tests)"),
        }
    }

    /// Builds the oracle for weights; `None` for [`Oracle::Elsewhere`].
    pub fn build(self, weights: &Weights, settings: &Settings) -> Option<Box<dyn Variant>> {
        Some(match self {
            Oracle::F64Reference => Box::new(reference_variant::<f64>(weights, settings)),
            Oracle::F32Reference => Box::new(reference_variant::<f32>(weights, settings)),
            Oracle::Q412Reference => Box::new(q412_variant(weights, settings)),
            Oracle::Elsewhere(_) => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Oracle::F64Reference => "reference-f64",
            Oracle::F32Reference => "reference",
            Oracle::Q412Reference => "reference-q4.12",
            Oracle::Elsewhere(what) => what,
        }
    }
}

/// A throughput computed from a model rather than timed (the FPGA's cycle count), shown as its
/// own row.
#[derive(Clone, Debug, PartialEq)]
pub struct Modelled {
    pub name: String,
    pub backend: String,
    pub tok_per_s: f64,
    /// How the figure was obtained.
    pub note: String,
    /// The modelled latency of the steps behind the figure, as `(nanoseconds, steps)` pairs
    /// (one pair per distinct latency); empty where the model gives none.
    pub step_latency_ns: Vec<(f64, u64)>,
}

/// Describes a prepared variant (shown in the bench table and JSON).
#[derive(Clone, Debug)]
pub struct VariantInfo {
    pub name: String,
    /// What generated or runs it: `scalar`, `proc-macro`, `cranelift`, `cuda`, …
    pub backend: String,
    /// The instruction set its hot path uses: `scalar`, `avx2+fma`, `avx512f`, `neon`, …
    pub isa: String,
    pub precision: Precision,
    /// Independent sampling streams run at once.
    pub streams: usize,
    /// Cores it keeps busy (the roof it is measured against scales with them).
    pub threads: usize,
    /// Runs on a GPU (no CPU roof applies).
    pub on_gpu: bool,
    pub oracle: Oracle,
    /// Whether every drawn token must equal the oracle's (boundary draws excused). False only
    /// where the oracle computes in another precision on purpose, to show its error.
    pub exact_tokens: bool,
    /// Preparation cost worth reporting (e.g. JIT compile time), in milliseconds.
    pub compile_ms: Option<f64>,
    /// Short remarks shown under the table.
    pub notes: Vec<String>,
    /// A modelled figure to show beside this variant's timed one.
    pub modelled: Option<Modelled>,
}

impl VariantInfo {
    pub fn new(
        name: impl Into<String>,
        backend: impl Into<String>,
        isa: impl Into<String>,
        precision: Precision,
    ) -> VariantInfo {
        VariantInfo {
            name: name.into(),
            backend: backend.into(),
            isa: isa.into(),
            precision,
            streams: 1,
            threads: 1,
            on_gpu: false,
            oracle: Oracle::for_precision(precision),
            exact_tokens: true,
            compile_ms: None,
            notes: Vec::new(),
            modelled: None,
        }
    }
}

/// Settings shared by every variant of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Sampling temperature (> 0).
    pub temperature: f32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            temperature: crate::sampler::DEFAULT_TEMPERATURE,
        }
    }
}

/// One way of running the model, prepared for a set of weights.
pub trait Variant: Send {
    fn info(&self) -> &VariantInfo;

    fn shape(&self) -> Shape;

    /// One step of stream 0, teacher-forcing style: the forward pass for `tok` at `pos` (the
    /// cache holds this sequence's positions `0..pos`), then the variant's own draw with the
    /// uniform `r`. Returns the drawn token; [`Variant::logits`] then holds the logits.
    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize;

    /// The logits of the last [`Variant::step`], as real numbers.
    fn logits(&self) -> Vec<f32>;

    /// Restarts the benchmark stream(s) at BOS with `seed`.
    fn reset(&mut self, seed: u32);

    /// Advances the benchmark stream(s) by `tokens` tokens in all (every step of every stream
    /// counts as one token). Returns a checksum of the drawn tokens.
    fn run(&mut self, tokens: u64) -> u64;

    /// Brings what [`Variant::info`] derives from the runs so far (a modelled row) up to date.
    /// The bench calls it after timing, before reading `info`, so that the runs themselves do
    /// no such bookkeeping. Nothing by default.
    fn settle(&mut self) {}

    /// A cumulative energy counter of the device an off-CPU variant runs on, in joules (NVML on
    /// NVIDIA GPUs); the bench reads it around the timed windows. `None` where there is none.
    fn device_energy_joules(&self) -> Option<f64> {
        None
    }

    /// Names mode: `count` names from `seed`, as text.
    fn names(&mut self, count: usize, seed: u32) -> Vec<String> {
        let shape = self.shape();
        generate_names(&shape, count, seed, |t, p, r| self.step(t, p, r))
            .iter()
            .map(|n| detokenize(&shape, n))
            .collect()
    }
}

/// Why a variant could not be prepared: the bench shows the row as skipped with this reason,
/// and a test skips only for [`PrepareError::MissingFeature`] (outside CI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareError {
    /// This CPU lacks an instruction-set feature the kernel is compiled for.
    MissingFeature { kernel: String, feature: &'static str },
    /// Anything else (weights of another shape, no GPU, a compiler's refusal): one line.
    Other(String),
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrepareError::MissingFeature { kernel, feature } => {
                write!(f, "{kernel} needs the CPU feature {feature}")
            }
            PrepareError::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for PrepareError {}

impl From<String> for PrepareError {
    fn from(reason: String) -> PrepareError {
        PrepareError::Other(reason)
    }
}

impl From<&str> for PrepareError {
    fn from(reason: &str) -> PrepareError {
        PrepareError::Other(reason.to_string())
    }
}

type Prepare = dyn Fn(&Weights, &Settings) -> Result<Box<dyn Variant>, PrepareError> + Send + Sync;

/// A registry entry: a name and how to prepare the variant for some weights. Preparing may
/// decline with a one-line reason (a missing CPU feature, a shape the kernel was not generated
/// for, no GPU); the bench then shows the row as skipped.
pub struct VariantSpec {
    pub name: String,
    pub backend: String,
    pub precision: Precision,
    /// The one shape this variant was generated for; `None` when it takes any shape.
    pub shape: Option<Shape>,
    /// Cores it runs on.
    pub threads: usize,
    prepare: Box<Prepare>,
}

impl VariantSpec {
    pub fn new(
        name: impl Into<String>,
        backend: impl Into<String>,
        precision: Precision,
        prepare: impl Fn(&Weights, &Settings) -> Result<Box<dyn Variant>, PrepareError> + Send + Sync + 'static,
    ) -> VariantSpec {
        VariantSpec {
            name: name.into(),
            backend: backend.into(),
            precision,
            shape: None,
            threads: 1,
            prepare: Box::new(prepare),
        }
    }

    /// Marks the variant as generated for one shape only.
    pub fn for_shape(mut self, shape: Shape) -> VariantSpec {
        self.shape = Some(shape);
        self
    }

    pub fn prepare(&self, weights: &Weights, settings: &Settings) -> Result<Box<dyn Variant>, PrepareError> {
        (self.prepare)(weights, settings)
    }
}

impl fmt::Debug for VariantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VariantSpec({}, {}, {})",
            self.name, self.backend, self.precision
        )
    }
}

/// The variants this crate provides: the scalar references.
pub fn variants() -> Vec<VariantSpec> {
    vec![
        VariantSpec::new("reference", "scalar", Precision::F32, |w, s| {
            Ok(Box::new(reference_variant::<f32>(w, s)))
        }),
        VariantSpec::new("reference-q4.12", "scalar", Precision::Q412, |w, s| {
            let mut v = q412_variant(w, s);
            // The Q4.12 reference is checked against the fp32 one: its row shows the error of
            // quantisation itself, so its tokens may differ.
            v.info.oracle = Oracle::F32Reference;
            v.info.exact_tokens = false;
            v.info.notes.push(
                "checked against the fp32 reference to show the cost of Q4.12 (logits saturate at ±8, \
                 so |dlogit| is large where the float logit is below -8)"
                    .into(),
            );
            Ok(Box::new(v))
        }),
    ]
}

/// A scalar forward pass producing real-valued logits: what [`EngineVariant`] wraps.
pub trait Engine: Send {
    fn engine_shape(&self) -> Shape;
    /// The forward pass for `tok` at `pos`, logits written as f32.
    fn forward_into(&mut self, tok: usize, pos: usize, logits: &mut [f32]);
}

impl<F: Real> Engine for Reference<F> {
    fn engine_shape(&self) -> Shape {
        *self.shape()
    }

    fn forward_into(&mut self, tok: usize, pos: usize, logits: &mut [f32]) {
        for (o, &l) in logits.iter_mut().zip(self.forward(tok, pos)) {
            *o = l.to_f32();
        }
    }
}

impl Engine for Q412Reference {
    fn engine_shape(&self) -> Shape {
        *self.shape()
    }

    fn forward_into(&mut self, tok: usize, pos: usize, logits: &mut [f32]) {
        for (o, &l) in logits.iter_mut().zip(self.forward(tok, pos)) {
            *o = l as f32 / microgpt_weights::Q412_ONE;
        }
    }
}

/// A scalar engine with the canonical sampler and the shared generation loops.
pub struct EngineVariant<E: Engine> {
    pub info: VariantInfo,
    engine: E,
    sampler: Sampler,
    logits: Vec<f32>,
    stream: Stream,
}

impl<E: Engine> EngineVariant<E> {
    pub fn new(info: VariantInfo, engine: E, settings: &Settings) -> EngineVariant<E> {
        let shape = engine.engine_shape();
        EngineVariant {
            info,
            engine,
            sampler: Sampler::new(settings.temperature),
            logits: vec![0.0; shape.vocab],
            stream: Stream::new(&shape, crate::sampler::DEFAULT_SEED),
        }
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }
}

/// The scalar reference in `F` as a variant (`reference` for f32, checked against f64;
/// `reference-f64` for f64).
pub fn reference_variant<F: Real>(weights: &Weights, settings: &Settings) -> EngineVariant<Reference<F>> {
    let info = if std::mem::size_of::<F>() == 8 {
        VariantInfo::new("reference-f64", "scalar", "scalar", Precision::F64)
    } else {
        let mut info = VariantInfo::new("reference", "scalar", "scalar", Precision::F32);
        info.oracle = Oracle::F64Reference;
        info
    };
    EngineVariant::new(info, Reference::new(weights), settings)
}

/// The scalar Q4.12 reference as a variant.
pub fn q412_variant(weights: &Weights, settings: &Settings) -> EngineVariant<Q412Reference> {
    let info = VariantInfo::new("reference-q4.12", "scalar", "scalar", Precision::Q412);
    EngineVariant::new(info, Q412Reference::new(weights), settings)
}

impl<E: Engine> Variant for EngineVariant<E> {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        self.engine.engine_shape()
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.engine.forward_into(tok, pos, &mut self.logits);
        self.sampler.draw(&self.logits, r)
    }

    fn logits(&self) -> Vec<f32> {
        self.logits.clone()
    }

    fn reset(&mut self, seed: u32) {
        self.stream = Stream::new(&self.engine.engine_shape(), seed);
    }

    fn run(&mut self, tokens: u64) -> u64 {
        let (engine, sampler, logits) = (&mut self.engine, &mut self.sampler, &mut self.logits);
        self.stream.run(tokens, |t, p, r| {
            engine.forward_into(t, p, logits);
            sampler.draw(logits, r)
        })
    }
}
