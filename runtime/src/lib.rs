//! What every microGPT backend implements and is held to: the kernel and variant interfaces,
//! aligned buffers, the reference engines (the oracles) and prefix tables, the canonical sampler
//! and generation loops, threads, and the agreement checks.

pub mod check;
pub mod kernel;
mod real;
pub mod reference;
pub mod sampler;
pub mod stream;
pub mod threads;
pub mod variant;

pub use real::Real;
pub use reference::{Q412Reference, Reference};
pub use sampler::{Sampler, XorShift32};
pub use stream::{Stream, generate_names};
pub use variant::{Modelled, Oracle, Precision, PrepareError, Settings, Variant, VariantInfo, VariantSpec};
