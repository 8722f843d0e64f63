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
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_name_from(&text))
        .unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

/// The first processor's name in a `/proc/cpuinfo` text, with its x86 family and model numbers
/// when the text gives them: names like "AMD EPYC" cover several microarchitectures whose FMA
/// throughput differs twofold (family 25 is Zen 3/4, 26 Zen 5), so a figure needs both.
fn cpu_name_from(text: &str) -> Option<String> {
    // The first occurrence of a field is the first processor's.
    let field = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let name = field("model name")
        .or_else(|| field("Model"))
        .or_else(|| field("Hardware"))?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name}, family {family} model {model}"),
        _ => name,
    })
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

    #[test]
    fn names_the_first_cpu_with_its_family_and_model() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                   model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n\
                   model name\t: Other\n";
        assert_eq!(
            super::cpu_name_from(x86).as_deref(),
            Some("AMD EPYC, family 25 model 17")
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU part\t: 0xd0c\n\nHardware\t: Example SoC\n";
        assert_eq!(super::cpu_name_from(arm).as_deref(), Some("Example SoC"));
        assert_eq!(super::cpu_name_from("processor\t: 0\nmodel name\t:\n"), None);
    }
}
