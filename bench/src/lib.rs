//! The bench: every variant the build provides, checked against its oracle and timed the same
//! way, then reported as a table and JSON.
//!
//! - [`registry`]: every variant, in the order the bench shows them;
//! - [`harness`]: preparation, the check, the timed windows;
//! - [`stats`], [`latency`], [`baseline`]: the median's interval and outlier windows,
//!   per-token latency percentiles, the comparison with a saved run;
//! - [`report`], [`roof`], [`energy`], [`machine`]: the table and JSON, the CPU's FMA roof, power
//!   (RAPL, NVML or an estimate), the CPU's name and features;
//! - [`soak`]: a long run with periodic checks; [`sweep`] and [`charts`]: rows over a grid of
//!   shapes, drawn as SVG;
//! - `peers` (cargo feature `peers`): the model written with candle, the framework row.

pub mod baseline;
pub mod charts;
pub mod energy;
pub mod harness;
pub mod latency;
pub mod machine;
#[cfg(feature = "peers")]
pub mod peers;
pub mod report;
pub mod roof;
pub mod soak;
pub mod stats;
pub mod sweep;

use microgpt_runtime::VariantSpec;

/// Every variant this build provides, in the order the bench shows them.
pub fn registry() -> Vec<VariantSpec> {
    let mut list = microgpt_runtime::variant::variants();
    list.extend(microgpt_talos::variants());
    list.extend(microgpt_kernels::variants());
    list.extend(microgpt_jit::variants());
    list.extend(microgpt_cuda::variants());
    #[cfg(feature = "peers")]
    list.extend(peers::variants());
    list
}
