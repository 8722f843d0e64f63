//! What machine the bench runs on: the CPU's name and the SIMD features it offers.

/// The CPU and its relevant instruction-set features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub cpu: String,
    pub arch: &'static str,
    /// Detected features that some variant can use, e.g. `avx2`, `fma`, `avx512f`, `neon`.
    pub features: Vec<String>,
    /// Logical cores available to this process.
    pub cores: usize,
}

impl Machine {
    pub fn detect() -> Machine {
        Machine {
            cpu: cpu_name(),
            arch: std::env::consts::ARCH,
            features: features(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

fn cpu_name() -> String {
    let from_cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    from_cpuinfo
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

#[cfg(target_arch = "x86_64")]
fn features() -> Vec<String> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($name) { f.push($name.to_string()); })*
        };
    }
    probe!(
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avxvnni"
    );
    f
}

#[cfg(target_arch = "aarch64")]
fn features() -> Vec<String> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {
            $(if std::arch::is_aarch64_feature_detected!($name) { f.push($name.to_string()); })*
        };
    }
    probe!("neon", "dotprod", "fp16", "sve", "sve2");
    f
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn features() -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_something() {
        let m = super::Machine::detect();
        assert!(!m.cpu.is_empty());
        assert!(m.cores >= 1);
        #[cfg(target_arch = "aarch64")]
        assert!(m.features.iter().any(|f| f == "neon"));
    }
}
