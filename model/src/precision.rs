//! The arithmetic a rendering computes in: one enum for every backend and the bench.

use std::fmt;

/// The arithmetic a variant computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    F64,
    F32,
    /// Q4.12 fixed point: i16 values and weights, i32 sums, the RMSNorm and softmax in f32.
    Q412,
    /// An all-integer datapath and sampler (TALOS-V2's: integer RMSNorm, exponential table,
    /// integer draw), checked against the hardware's test vectors rather than a reference here.
    Integer,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F64 => "f64",
            Precision::F32 => "fp32",
            Precision::Q412 => "Q4.12",
            Precision::Integer => "integer",
        })
    }
}

impl Precision {
    /// The precisions the kernel renderers (proc-macro, JIT, CUDA) generate.
    pub const KERNELS: [Precision; 2] = [Precision::F32, Precision::Q412];

    /// Its name in kernel and variant names: `f32`, `q4.12`, …
    pub fn slug(self) -> &'static str {
        match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
            Precision::Q412 => "q4.12",
            Precision::Integer => "int",
        }
    }

    /// Reads a precision as users write it (`f32`, `fp32`, `q4.12`, `q412`, `f64`, `int`).
    pub fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "f64" | "fp64" => Ok(Precision::F64),
            "f32" | "fp32" => Ok(Precision::F32),
            "q4.12" | "q412" => Ok(Precision::Q412),
            "int" | "integer" => Ok(Precision::Integer),
            other => Err(format!("unknown precision `{other}` (expected f32 or q4.12)")),
        }
    }

    /// For the renderers of [`Precision::KERNELS`]: `f32` for fp32, `q412` for Q4.12.
    ///
    /// # Panics
    ///
    /// For a precision no kernel is generated in: a renderer's caller asked for one it does not
    /// offer (each renderer checks its precision where it is chosen).
    pub fn pick<T>(self, f32: T, q412: T) -> T {
        match self {
            Precision::F32 => f32,
            Precision::Q412 => q412,
            other => panic!("no kernel is generated in {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for p in [
            Precision::F64,
            Precision::F32,
            Precision::Q412,
            Precision::Integer,
        ] {
            assert_eq!(Precision::parse(p.slug()), Ok(p));
        }
        assert!(Precision::parse("f16").unwrap_err().contains("`f16`"));
        assert_eq!(Precision::Q412.pick(1, 2), 2);
    }
}
