//! The JIT as bench variants: any shape up to [`crate::MAX_MACS`] weight MACs, compiled when
//! prepared.

use crate::{Jit, JitOptions, Precision, compile};
use microgpt_model::Shape;
use microgpt_runtime::variant::VariantInfo;
use microgpt_runtime::{Settings, Stream, Variant, VariantSpec};
use microgpt_weights::Weights;

/// A compiled step with the shared benchmark loop.
pub struct JitVariant {
    info: VariantInfo,
    jit: Jit,
    stream: Stream,
}

impl JitVariant {
    pub fn new(weights: &Weights, settings: &Settings, options: &JitOptions) -> Result<JitVariant, String> {
        let jit = compile(weights, settings, options).map_err(|e| e.to_string())?;
        let precision = options.precision;
        let name = variant_name(precision);
        // Cranelift's vectors are 128 bits wide; it encodes them with the host's best extension.
        let isa = if cfg!(target_arch = "aarch64") {
            "neon 128-bit"
        } else {
            "xmm 128-bit"
        };
        let mut info = VariantInfo::new(name, "cranelift", isa, precision);
        info.compile_ms = Some(jit.compile_ms());
        Ok(JitVariant {
            info,
            stream: Stream::new(weights.shape(), microgpt_runtime::sampler::DEFAULT_SEED),
            jit,
        })
    }

    pub fn jit(&self) -> &Jit {
        &self.jit
    }
}

impl Variant for JitVariant {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        self.jit.shape()
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.jit.step(tok, pos, r)
    }

    fn logits(&self) -> Vec<f32> {
        self.jit.logits()
    }

    fn reset(&mut self, seed: u32) {
        self.stream = Stream::new(&self.jit.shape(), seed);
    }

    fn run(&mut self, tokens: u64) -> u64 {
        let jit = &mut self.jit;
        self.stream.run(tokens, |t, p, r| jit.step(t, p, r))
    }
}

/// `cranelift-f32`, `cranelift-q4.12`.
fn variant_name(precision: Precision) -> String {
    format!("cranelift-{}", precision.slug())
}

/// The JIT's registry entries: fp32 and Q4.12, for whatever shape the weights have.
pub fn variants() -> Vec<VariantSpec> {
    Precision::KERNELS
        .into_iter()
        .map(|precision| {
            VariantSpec::new(variant_name(precision), "cranelift", precision, move |w, s| {
                let options = JitOptions {
                    verify: false,
                    ..JitOptions::new(precision)
                };
                Ok(Box::new(JitVariant::new(w, s, &options)?) as Box<dyn Variant>)
            })
        })
        .collect()
}
