//! The microGPT runtime: the reference engines (the oracles), the canonical sampler and
//! generation loops, the variant registry, the bench harness and the trainer.

pub mod bench;
pub mod cuda;
pub mod energy;
pub mod kernel;
pub mod machine;
mod real;
pub mod reference;
pub mod report;
pub mod roof;
pub mod sampler;
pub mod soak;
pub mod stream;
pub mod talos;
pub mod threads;
pub mod train;
pub mod variant;

pub use real::Real;
pub use reference::{Q412Reference, Reference};
pub use sampler::{Sampler, XorShift32};
pub use stream::{Stream, generate_names};
pub use variant::{Modelled, Oracle, Precision, Settings, Variant, VariantInfo, VariantSpec};
