//! The report table against a committed snapshot, for rows of every kind: a timed row with its
//! check, a mismatched one, one with a modelled figure beside it, a GPU row, skipped rows. A
//! change to the table's layout or wording shows up here as a diff; rewrite the snapshot with
//! `UPDATE_SNAPSHOTS=1 cargo test -p microgpt-bench --test report` and review it.

use microgpt_bench::energy::Power;
use microgpt_bench::harness::{BenchOptions, Outcome, Row, Timing};
use microgpt_bench::machine::Machine;
use microgpt_bench::report::Report;
use microgpt_bench::roof::Roof;
use microgpt_model::Shape;
use microgpt_runtime::check::Agreement;
use microgpt_runtime::{Modelled, Oracle, Precision, VariantInfo};
use std::path::Path;

fn timing(tok_per_s: f64, watts: f64) -> Timing {
    Timing {
        tok_per_s,
        ns_per_token: 1e9 / tok_per_s,
        window_tokens: 100_000,
        windows: vec![tok_per_s; 3],
        power: Power::Estimated {
            watts,
            watts_per_core: 5.0,
        },
    }
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
    });
    let mut gpu = VariantInfo::new("cuda-streams", "cuda", "sm_90", Precision::F32);
    gpu.on_gpu = true;
    gpu.streams = 50_688;
    vec![
        row(
            reference,
            timing(1_250_000.0, 5.0),
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
            timing(4_500_000.0, 5.0),
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

#[test]
fn the_table_matches_its_snapshot() {
    let machine = Machine {
        cpu: "Example CPU".into(),
        arch: "x86_64",
        features: vec!["avx2".into(), "fma".into(), "avx512f".into()],
        cores: 2,
    };
    let options = BenchOptions {
        rapl: None,
        ..BenchOptions::default()
    };
    let roof = Roof {
        isa: "avx512f",
        lanes: 16,
        per_core: 58.8e9,
        all_cores: 117.6e9,
        cores: 2,
    };
    let outcomes = outcomes();
    let report = Report {
        machine: &machine,
        shape: Shape::DEFAULT,
        weights: "example weights",
        options: &options,
        outcomes: &outcomes,
        roof: Some(&roof),
    };
    let got = report.table();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/report-table.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    if got != want {
        panic!(
            "the report table differs from {}:\n--- want\n{want}\n--- got\n{got}",
            path.display()
        );
    }
    assert!(got.contains("MISMATCH "), "the mismatched row is flagged");
}
