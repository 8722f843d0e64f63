//! Energy: measured where the machine exposes it, estimated (and labelled so) where it does not.
//!
//! On Linux the CPU package's energy counters are read from powercap (RAPL:
//! `/sys/class/powercap/*/energy_uj` of the zones named `package-*`), before and after the timed
//! windows. Without them, power is estimated as watts per core × cores the row uses, from a
//! stated assumption (`--watts-per-core`, default [`DEFAULT_WATTS_PER_CORE`]).

use std::path::{Path, PathBuf};

/// The assumed power of one busy core when nothing is measured: roughly a current server CPU's
/// package power under a full vector load divided by its cores (e.g. 360 W over 96 cores is
/// 3.75 W), plus a share of the uncore.
pub const DEFAULT_WATTS_PER_CORE: f64 = 5.0;

/// The CPU package energy counters (RAPL through powercap).
#[derive(Clone, Debug)]
pub struct Rapl {
    zones: Vec<Zone>,
}

#[derive(Clone, Debug)]
struct Zone {
    energy: PathBuf,
    /// The counter wraps at this value (µJ).
    range: u64,
}

/// A reading of every zone, µJ.
#[derive(Clone, Debug)]
pub struct Reading(Vec<u64>);

impl Rapl {
    /// The package zones under `/sys/class/powercap`, if any can be read.
    pub fn detect() -> Option<Rapl> {
        Rapl::under(Path::new("/sys/class/powercap"))
    }

    /// The package zones under `root` (a powercap tree).
    pub fn under(root: &Path) -> Option<Rapl> {
        let mut zones = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for dir in entries {
            let name = std::fs::read_to_string(dir.join("name")).unwrap_or_default();
            if !name.trim().starts_with("package") {
                continue;
            }
            let energy = dir.join("energy_uj");
            let range = std::fs::read_to_string(dir.join("max_energy_range_uj"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX);
            if read_u64(&energy).is_some() {
                zones.push(Zone { energy, range });
            }
        }
        (!zones.is_empty()).then_some(Rapl { zones })
    }

    pub fn read(&self) -> Option<Reading> {
        self.zones
            .iter()
            .map(|z| read_u64(&z.energy))
            .collect::<Option<_>>()
            .map(Reading)
    }

    /// Joules between two readings, counting one wrap of each counter.
    pub fn joules(&self, from: &Reading, to: &Reading) -> f64 {
        let uj: u64 = self
            .zones
            .iter()
            .zip(from.0.iter().zip(&to.0))
            .map(|(z, (&a, &b))| if b >= a { b - a } else { z.range - a + b })
            .sum();
        uj as f64 * 1e-6
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How a row's power was obtained.
#[derive(Clone, Debug, PartialEq)]
pub enum Power {
    /// Package energy over the timed windows ÷ their duration.
    Measured { watts: f64, source: &'static str },
    /// `watts_per_core × cores used`, an assumption.
    Estimated { watts: f64, watts_per_core: f64 },
    /// A device with no readable energy counter (a GPU without NVML): no figure at all.
    NotMeasured,
}

impl Power {
    pub fn watts(&self) -> Option<f64> {
        match *self {
            Power::Measured { watts, .. } | Power::Estimated { watts, .. } => Some(watts),
            Power::NotMeasured => None,
        }
    }

    /// Tokens per joule at `tok_per_s`, where the power is known.
    pub fn tok_per_joule(&self, tok_per_s: f64) -> Option<f64> {
        self.watts().filter(|&w| w > 0.0).map(|w| tok_per_s / w)
    }

    /// `measured (RAPL package)` or `estimated (5 W/core)`.
    pub fn label(&self) -> String {
        match self {
            Power::Measured { source, .. } => format!("measured ({source})"),
            Power::Estimated { watts_per_core, .. } => format!("estimated ({watts_per_core} W/core)"),
            Power::NotMeasured => "not measured".into(),
        }
    }

    pub fn is_measured(&self) -> bool {
        matches!(self, Power::Measured { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, range: u64) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
    }

    #[test]
    fn reads_package_zones_and_handles_wraps() {
        let root = std::env::temp_dir().join(format!("microgpt-rapl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        zone(&root, "intel-rapl:0", "package-0", 1_000_000, 10_000_000);
        zone(&root, "intel-rapl:0:0", "core", 5, 10);
        let rapl = Rapl::under(&root).expect("one package zone");
        assert_eq!(rapl.zones.len(), 1);
        let a = rapl.read().unwrap();
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "3500000\n").unwrap();
        let b = rapl.read().unwrap();
        assert!((rapl.joules(&a, &b) - 2.5).abs() < 1e-9);
        // Wrapped: 9.5 J to the range, then 0.5 J past zero.
        let wrapped = Reading(vec![500_000]);
        let before = Reading(vec![500_000 + 500_000]);
        assert!((rapl.joules(&before, &wrapped) - 9.5).abs() < 1e-9);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(Rapl::under(&root).is_none());
    }

    #[test]
    fn labels_say_what_was_measured() {
        let m = Power::Measured {
            watts: 40.0,
            source: "RAPL package",
        };
        assert_eq!(m.label(), "measured (RAPL package)");
        let e = Power::Estimated {
            watts: 10.0,
            watts_per_core: 5.0,
        };
        assert_eq!(e.label(), "estimated (5 W/core)");
        assert!(m.is_measured() && !e.is_measured());
        assert_eq!(e.tok_per_joule(100.0), Some(10.0));
        assert_eq!(Power::NotMeasured.tok_per_joule(100.0), None);
        assert_eq!(Power::NotMeasured.label(), "not measured");
    }
}
