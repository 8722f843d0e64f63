//! microGPT, compiled many ways: a thin facade over the workspace crates.
//!
//! - [`model`]: the one description of the network (shape, weight layout, op list);
//! - [`weights`]: formats, Q4.12, the embedded default weights;
//! - [`runtime`]: reference engines, sampler, variants, bench harness, trainer;
//! - [`kernels`]: the proc-macro kernels of the shipped shapes;
//! - [`jit`]: the Cranelift renderer, for any shape at run time;
//! - `peers` (cargo feature `peers`): the model written with candle, the framework row.
//!
//! [`registry`] lists every variant the build provides; the bench runs them all, [`sweep`] runs
//! them over a grid of shapes and [`charts`] draws the results.

pub use microgpt_jit as jit;
pub use microgpt_kernels as kernels;
pub use microgpt_model as model;
pub use microgpt_runtime as runtime;
pub use microgpt_weights as weights;

pub mod charts;
#[cfg(feature = "peers")]
pub mod peers;
pub mod sweep;

use microgpt_runtime::VariantSpec;

/// Every variant this build provides, in the order the bench shows them.
pub fn registry() -> Vec<VariantSpec> {
    let mut list = microgpt_runtime::variant::variants();
    list.extend(microgpt_kernels::variants());
    list.extend(microgpt_jit::variants());
    list.extend(microgpt_runtime::cuda::variants());
    #[cfg(feature = "peers")]
    list.extend(peers::variants());
    list
}
