//! microGPT, compiled many ways: a thin facade over the workspace crates.
//!
//! - [`model`]: the one description of the network (shape, weight layout, op list, weight plan);
//! - [`weights`]: formats, Q4.12, the fp32 fold, the embedded default weights;
//! - [`runtime`]: what every backend implements and is held to (kernel and variant interfaces,
//!   reference engines, sampler, agreement checks);
//! - the backends: [`kernels`] (the proc-macro kernels of the shipped shapes), [`jit`] (Cranelift,
//!   any shape at run time), [`cuda`] (CUDA C through NVRTC), [`talos`] (TALOS-V2 emulated);
//! - [`train`]: the trainer; [`bench`]: the registry, the harness, the report, sweep and charts.

pub use microgpt_bench as bench;
pub use microgpt_bench::registry;
pub use microgpt_cuda as cuda;
pub use microgpt_jit as jit;
pub use microgpt_kernels as kernels;
pub use microgpt_model as model;
pub use microgpt_runtime as runtime;
pub use microgpt_talos as talos;
pub use microgpt_train as train;
pub use microgpt_weights as weights;
