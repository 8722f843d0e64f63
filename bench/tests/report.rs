//! The report table against a committed snapshot, for rows of every kind: a timed row with its
//! check, a mismatched one, one with a modelled figure beside it, a GPU row, skipped rows. A
//! change to the table's layout or wording shows up here as a diff; rewrite the snapshot with
//! `UPDATE_SNAPSHOTS=1 cargo test -p microgpt-bench --test report` and review it.

use microgpt_bench::baseline::Baseline;
use microgpt_bench::energy::Power;
use microgpt_bench::harness::{BenchOptions, Outcome, Row, Timing};
use microgpt_bench::latency::{Latency, LatencySource};
use microgpt_bench::machine::Machine;
use microgpt_bench::report::Report;
use microgpt_bench::roof::Roof;
use microgpt_bench::stats;
use microgpt_model::Shape;
use microgpt_runtime::check::Agreement;
use microgpt_runtime::{Modelled, Oracle, Precision, VariantInfo};
use std::path::Path;

fn timing(tok_per_s: f64, watts: f64) -> Timing {
    let windows = vec![
        tok_per_s * 0.98,
        tok_per_s,
        tok_per_s * 1.01,
        tok_per_s * 0.99,
        tok_per_s * 1.02,
    ];
    Timing {
        tok_per_s,
        interval: stats::median_interval(&windows),
        ns_per_token: 1e9 / tok_per_s,
        window_tokens: 100_000,
        outliers: stats::outliers(&windows),
        windows,
        power: Power::Estimated {
            watts,
            watts_per_core: 5.0,
        },
        latency: None,
    }
}

/// A single-stream row's latency: the median near its mean, a long tail.
fn latency(tok_per_s: f64) -> Option<Latency> {
    let ns = 1e9 / tok_per_s;
    Some(Latency {
        p50: ns * 1.1,
        p99: ns * 1.6,
        p999: ns * 4.0,
        max: ns * 300.0,
        mean: ns * 1.12,
        samples: 100_000,
        source: LatencySource::Timed { timer_ns: 18.0 },
        curve: Vec::new(),
    })
}

fn agreement(oracle: &str, tokens: usize, excused: usize, differed: usize, diff: f64) -> Agreement {
    Agreement {
        oracle: oracle.into(),
        tokens,
        max_abs_logit_diff: diff,
        agreed: tokens - excused - differed,
        excused,
        differed,
        free_run_identical: if differed > 0 { 17 } else { tokens },
        free_run_tokens: tokens,
    }
}

fn row(info: VariantInfo, timing: Timing, agreement: Option<Agreement>) -> Outcome {
    Outcome::Ran(Box::new(Row {
        info,
        timing,
        agreement,
        names: None,
    }))
}

fn skipped(name: &str) -> Outcome {
    Outcome::Skipped {
        name: name.into(),
        backend: "proc-macro".into(),
        reason: "not compiled for this architecture".into(),
    }
}

fn outcomes() -> Vec<Outcome> {
    let reference = VariantInfo::new("reference", "scalar", "scalar", Precision::F32);
    let mut batch = VariantInfo::new("avx512-f32-x16-2t", "proc-macro", "avx512f", Precision::F32);
    batch.streams = 32;
    batch.threads = 2;
    batch
        .notes
        .push("sixteen streams in the lanes of each core".into());
    let mut broken = VariantInfo::new("sse-q4.12", "proc-macro", "sse4.1+fma", Precision::Q412);
    broken.oracle = Oracle::Q412Reference;
    let mut jit = VariantInfo::new("cranelift-f32", "cranelift", "xmm 128-bit", Precision::F32);
    jit.compile_ms = Some(12.34);
    let mut talos = VariantInfo::new("talos", "emulator", "scalar", Precision::Integer);
    talos.oracle = Oracle::Elsewhere("TALOS-V2 RTL vectors (tests)");
    talos.modelled = Some(Modelled {
        name: "talos-v2-fpga".into(),
        backend: "fpga model".into(),
        tok_per_s: 52_000.0,
        note: "by its cycle model".into(),
        step_latency_ns: vec![(15_431.1, 900), (15_786.7, 95), (16_142.2, 5)],
    });
    let mut gpu = VariantInfo::new("cuda-streams", "cuda", "sm_90", Precision::F32);
    gpu.on_gpu = true;
    gpu.streams = 50_688;
    vec![
        row(
            reference,
            Timing {
                latency: latency(1_250_000.0),
                ..timing(1_250_000.0, 5.0)
            },
            Some(agreement("reference", 4096, 0, 0, 0.0)),
        ),
        row(
            batch,
            timing(21_000_000.0, 10.0),
            Some(agreement("reference", 4096, 3, 0, 2.4e-6)),
        ),
        row(
            broken,
            timing(3_000_000.0, 5.0),
            Some(agreement("reference-q4.12", 4096, 0, 2, 0.25)),
        ),
        row(
            jit,
            Timing {
                latency: latency(4_500_000.0),
                // One slow window: flagged.
                windows: vec![4.5e6, 4.52e6, 2.1e6, 4.49e6, 4.51e6],
                outliers: vec![2],
                interval: (2.1e6, 4.52e6),
                ..timing(4_500_000.0, 5.0)
            },
            Some(agreement("reference", 4096, 0, 0, 1.9e-6)),
        ),
        row(talos, timing(900_000.0, 5.0), None),
        row(
            gpu,
            Timing {
                power: Power::Measured {
                    watts: 530.0,
                    source: "NVML",
                },
                ..timing(2.14e9, 0.0)
            },
            Some(agreement("reference", 4096, 0, 0, 7.6e-6)),
        ),
        skipped("neon-f32"),
        skipped("neon-q4.12"),
    ]
}

fn machine() -> Machine {
    Machine {
        cpu: "Example CPU".into(),
        arch: "x86_64",
        features: vec!["avx2".into(), "fma".into(), "avx512f".into()],
        cores: 2,
    }
}

fn roof(per_core: f64) -> Roof {
    Roof {
        isa: "avx512f",
        lanes: 16,
        per_core,
        all_cores: 2.0 * per_core,
        cores: 2,
    }
}

/// A saved run in which the reference was as fast as in `outcomes`, the batch row slower (by a
/// sixth) and the JIT faster (by a ninth).
fn baseline() -> Baseline {
    let windows = |r: f64| [0.98, 1.0, 1.01, 0.99, 1.02].map(|f| f * r);
    Baseline::from_json(
        "saved.json",
        &serde_json::json!({
            "machine": {"cpu": "Example CPU"},
            "shape": {"vocab": 27, "block": 16, "embd": 16, "heads": 4, "layers": 1, "mlp": 64},
            "weights": "example weights",
            "results": [
                {"variant": "reference", "windows_tok_per_s": windows(1_250_000.0)},
                {"variant": "avx512-f32-x16-2t", "windows_tok_per_s": windows(21e6 / 1.2)},
                {"variant": "cranelift-f32", "windows_tok_per_s": windows(4.5e6 / 0.9)},
            ],
        }),
    )
    .unwrap()
}

/// The report's text against the snapshot `name` (rewritten with `UPDATE_SNAPSHOTS=1`).
fn assert_snapshot(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    if got != want {
        panic!(
            "the report differs from {}:\n--- want\n{want}\n--- got\n{got}",
            path.display()
        );
    }
}

/// What every report of these tests shows: the rows of `outcomes`, a saved run, the roofs.
struct Fixture {
    machine: Machine,
    options: BenchOptions,
    outcomes: Vec<Outcome>,
    baseline: Baseline,
    roof: Roof,
    /// The roof measured after the rows: a quarter lower, as on a disturbed machine.
    lower_roof: Roof,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            machine: machine(),
            options: BenchOptions {
                rapl: None,
                ..BenchOptions::default()
            },
            outcomes: outcomes(),
            baseline: baseline(),
            roof: roof(58.8e9),
            lower_roof: roof(44.0e9),
        }
    }

    /// The report, the roof after the rows as measured before or lower, with the saved run or
    /// without.
    fn report(&self, disturbed: bool, compared: bool) -> Report<'_> {
        Report {
            machine: &self.machine,
            shape: Shape::DEFAULT,
            weights: "example weights",
            options: &self.options,
            outcomes: &self.outcomes,
            roof: Some(&self.roof),
            roof_after: Some(if disturbed { &self.lower_roof } else { &self.roof }),
            baseline: compared.then_some(&self.baseline),
            wide: false,
        }
    }
}

#[test]
fn the_table_matches_its_snapshot() {
    let f = Fixture::new();
    let report = f.report(true, false);
    let narrow = report.header() + &report.table();
    assert_snapshot("report-table.txt", &narrow);
    let wide = Report { wide: true, ..report };
    assert_snapshot("report-table-wide.txt", &wide.table());
    let compared = f.report(true, true);
    let with_baseline = compared.table();
    assert_snapshot("report-table-baseline.txt", &with_baseline);

    for text in [&narrow, &with_baseline] {
        for line in text.lines() {
            assert!(line.chars().count() <= 120, "wider than 120 columns: {line}");
        }
    }
    assert!(
        wide.table().lines().any(|l| l.chars().count() > 120),
        "--wide has every column"
    );
    assert!(narrow.contains("MISMATCH"), "the mismatched row is flagged");
    assert!(
        narrow.contains("warning: the one-core roof moved -25%"),
        "{narrow}"
    );
    assert!(
        narrow.contains("warning: cranelift-f32: window 3 of 5"),
        "{narrow}"
    );
    let verdicts: Vec<&str> = with_baseline
        .lines()
        .filter(|l| l.contains("  ok "))
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    // The reference, the batch row, the JIT (its slow window in its median's interval, not in
    // the median), the GPU row (not in the saved run).
    assert_eq!(verdicts, ["same", "faster", "slower", "-"], "{with_baseline}");
}

#[test]
fn the_json_carries_intervals_latency_and_the_comparison() {
    let f = Fixture::new();
    let report = f.report(false, true);
    let doc = report.json();
    let results = doc["results"].as_array().unwrap();
    let reference = &results[0];
    let ci = reference["tok_per_s_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    let rate = reference["tok_per_s"].as_f64().unwrap();
    assert!(lo <= rate && rate <= hi, "{reference}");
    let l = &reference["latency_ns"];
    for key in ["p50", "p99", "p999", "max"] {
        assert!(l[key].as_f64().unwrap() > 0.0, "{key}: {l}");
    }
    assert_eq!(reference["vs_baseline"]["verdict"], "same");
    assert_eq!(results[1]["vs_baseline"]["verdict"], "faster");
    assert!(
        results[1]["latency_ns"].is_null(),
        "many streams: no per-token latency"
    );
    assert!(results[4]["vs_baseline"].is_null(), "no such row in the baseline");
    assert_eq!(results[3]["outlier_windows"], serde_json::json!([2]));
    // The FPGA's exact latency from its cycle model.
    let fpga = &doc["modelled"][0]["latency_ns"];
    assert_eq!(fpga["p50"].as_f64(), Some(15_431.1));
    assert_eq!(fpga["p99"].as_f64(), Some(15_786.7));
    assert_eq!(fpga["max"].as_f64(), Some(16_142.2));
    assert_eq!(doc["baseline"]["path"], "saved.json");
    assert!(
        doc["warnings"].as_array().unwrap().len() == 1,
        "{}",
        doc["warnings"]
    );
}
