//! microGPT weights: the in-memory form, the file formats, Q4.12 and the embedded defaults.
//!
//! - [`Weights`]: a shape plus the flat f32 parameter vector in canonical order;
//! - [`load`]: safetensors (the project's own format), raw blobs (flat f32 or Q4.12
//!   i16) and TALOS-V2 ROM folders (`*_q12.hex`), detected from the file or forced;
//! - [`q412`]: the quantisation to Q4.12 (docs/spec.md#q412-quantisation);
//! - [`default_weights`]: the trained default weights, embedded in the binary.

mod error;
mod fold;
mod formats;
mod init;
mod q412;

pub use error::{Problem, WeightsError};
pub use fold::folded_f32;
pub use formats::{
    Format, LoadOptions, load, load_bytes, parse_talos_hex, safetensors_metadata, talos_hex_file_name,
};
pub use q412::{Q412_ONE, dequantize, q412, quantize};

use microgpt_model::{Layout, Param, Shape};

/// The default weights: trained by this project's trainer on makemore's names (the command is in
/// docs/training.md), stored as safetensors.
pub const DEFAULT_SAFETENSORS: &[u8] = include_bytes!("../default/microgpt-default.safetensors");

/// A shape and its parameters, flat, in canonical order ([`Layout`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    shape: Shape,
    data: Vec<f32>,
    source: String,
}

impl Weights {
    /// Wraps a flat parameter vector. Fails when the length does not match the shape or a value
    /// is not finite; `source` says where the values came from (shown in the bench header).
    pub fn new(shape: Shape, data: Vec<f32>, source: impl Into<String>) -> Result<Weights, WeightsError> {
        let source = source.into();
        shape
            .validate()
            .map_err(|e| WeightsError::new(&source, Problem::Shape(e)))?;
        let layout = Layout::new(shape);
        if data.len() != layout.param_count() {
            return Err(WeightsError::new(
                &source,
                Problem::Inconsistent(format!(
                    "{} values for a shape of {} parameters ({shape})",
                    data.len(),
                    layout.param_count()
                )),
            ));
        }
        for t in layout.tensors() {
            if let Some(i) = data[t.range()].iter().position(|v| !v.is_finite()) {
                return Err(WeightsError::new(
                    &source,
                    Problem::NonFinite {
                        tensor: t.name.clone(),
                        index: i,
                        value: data[t.offset + i],
                    },
                ));
            }
        }
        Ok(Weights { shape, data, source })
    }

    /// Seeded random initialisation, every parameter drawn from N(0, std) in canonical order
    /// (ChaCha8 seeded with `seed`), as microGPT initialises (std 0.08).
    pub fn random(shape: Shape, seed: u64, std: f32) -> Weights {
        let data = init::normal(shape.param_count(), seed, std);
        Weights::new(shape, data, format!("random init N(0, {std}), seed {seed}"))
            .expect("random weights are finite and sized for a validated shape")
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.shape)
    }

    /// All parameters, flat, canonical order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access for training. Callers keep the values finite.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// One tensor, row-major.
    ///
    /// # Panics
    /// If `param` names a layer the shape does not have.
    pub fn tensor(&self, param: Param) -> &[f32] {
        &self.data[self.layout().tensor(param).range()]
    }

    /// Where the values came from, e.g. a path and its format.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn with_source(mut self, source: impl Into<String>) -> Weights {
        self.source = source.into();
        self
    }

    /// The same weights rounded to Q4.12 and back, exactly as a Q4.12 backend sees them.
    pub fn quantized(&self) -> Vec<i16> {
        quantize(&self.data)
    }

    /// Serialises to safetensors: one F32 tensor per canonical name, `heads` in the metadata.
    pub fn to_safetensors(&self, extra_metadata: &[(&str, &str)]) -> Vec<u8> {
        formats::safetensors_bytes(self, extra_metadata)
    }

    /// The raw f32 blob: every parameter, little-endian, canonical order, no header.
    pub fn to_raw_f32(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The raw Q4.12 blob: every parameter quantised to i16, little-endian.
    pub fn to_raw_q412(&self) -> Vec<u8> {
        self.quantized().iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Writes a TALOS-V2 ROM folder: one `<name>_q12.hex` file per tensor, a 16-bit hex word per
    /// line.
    pub fn write_talos_hex(&self, dir: &std::path::Path) -> Result<(), WeightsError> {
        formats::write_talos_hex(self, dir)
    }
}

/// The embedded default weights (default shape).
pub fn default_weights() -> Weights {
    let nll = formats::safetensors_metadata(DEFAULT_SAFETENSORS)
        .get("nll")
        .map_or_else(String::new, |v| format!(", NLL {v} on names.txt"));
    load_bytes(
        DEFAULT_SAFETENSORS,
        "embedded default weights",
        &LoadOptions {
            format: Some(Format::Safetensors),
            shape: None,
        },
    )
    .expect("the embedded default weights are valid safetensors")
    .with_source(format!("embedded default weights (trained{nll})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_weights_have_the_default_shape() {
        let w = default_weights();
        assert_eq!(*w.shape(), Shape::DEFAULT);
        assert_eq!(w.data().len(), 4192);
        assert_eq!(w.tensor(Param::LmHead).len(), 27 * 16);
    }

    #[test]
    fn new_rejects_wrong_length_and_nan() {
        let s = Shape::DEFAULT;
        let e = Weights::new(s, vec![0.0; 10], "x").unwrap_err().to_string();
        assert!(e.contains("10 values for a shape of 4192 parameters"), "{e}");
        let mut data = vec![0.0; 4192];
        data[4000] = f32::NAN;
        let e = Weights::new(s, data, "x").unwrap_err().to_string();
        assert!(e.starts_with("x: "), "{e}");
        assert!(e.contains("lm_head"), "{e}");
    }

    #[test]
    fn random_init_is_seeded() {
        let s = Shape::DEFAULT;
        let a = Weights::random(s, 7, 0.08);
        assert_eq!(a, Weights::random(s, 7, 0.08));
        assert_ne!(a.data(), Weights::random(s, 8, 0.08).data());
        let mean = a.data().iter().sum::<f32>() / 4192.0;
        let var = a.data().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4192.0;
        assert!(
            mean.abs() < 0.01 && (var.sqrt() - 0.08).abs() < 0.01,
            "{mean} {var}"
        );
    }
}
