//! The examples as a user runs them: flags, errors, exit codes, JSON.

use std::path::PathBuf;
use std::process::{Command, Output};

/// An example binary built by `cargo test` next to this test's own binary.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile folder");
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} not built", path.display());
    Command::new(path)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("microgpt-cli-{}-{name}", std::process::id()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

#[test]
fn bad_flags_and_files_are_one_line_errors_with_exit_code_2() {
    one_line_error(
        &example("bench").arg("--frobnicate").output().unwrap(),
        "--frobnicate",
    );
    one_line_error(
        &example("bench").args(["--tokens", "many"]).output().unwrap(),
        "many",
    );
    one_line_error(
        &example("bench").args(["--temperature", "-1"]).output().unwrap(),
        "temperature",
    );
    one_line_error(
        &example("bench").args(["--shape", "heads=3"]).output().unwrap(),
        "divisible",
    );
    one_line_error(
        &example("bench").args(["--format", "png"]).output().unwrap(),
        "png",
    );
    one_line_error(
        &example("bench").args(["--variant", "nonesuch"]).output().unwrap(),
        "nonesuch",
    );

    let bad = tmp("bad.bin");
    std::fs::write(&bad, [1u8; 123]).unwrap();
    let out = example("bench").arg("--weights").arg(&bad).output().unwrap();
    one_line_error(&out, &bad.display().to_string());
    assert!(text(&out.stderr).contains("123 bytes"));
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn list_shows_the_registry() {
    let out = example("bench").arg("--list").output().unwrap();
    assert!(out.status.success());
    let listing = text(&out.stdout);
    assert!(
        listing.contains("reference") && listing.contains("reference-q4.12"),
        "{listing}"
    );
}

#[test]
fn nvrtc_check_answers_in_one_line_and_its_exit_status() {
    let out = example("bench").arg("--nvrtc-check").output().unwrap();
    let said = text(&out.stdout);
    assert_eq!(said.lines().count(), 1, "{said}");
    if cfg!(feature = "cuda") {
        // Either answer, as long as the status agrees with it.
        assert_eq!(out.status.success(), said == "NVRTC loads\n", "{said}");
        assert!(matches!(out.status.code(), Some(0 | 1)), "{said}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("without the `cuda` feature"), "{said}");
    }
}

#[test]
fn a_short_run_writes_the_documented_json() {
    let json = tmp("out.json");
    let out = example("bench")
        .args([
            "--variant",
            "reference",
            "--tokens",
            "200",
            "--min-window",
            "0",
            "--repeats",
            "1",
        ])
        .args(["--check-tokens", "64", "--names", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cpu:") && stdout.contains("shape:") && stdout.contains("weights:"));
    assert!(stdout.contains("sample  1: "), "{stdout}");

    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert!(doc["machine"]["cpu"].is_string());
    assert!(doc["machine"]["features"].is_array());
    assert_eq!(doc["shape"]["vocab"], 27);
    assert_eq!(doc["shape"]["mlp"], 64);
    assert!(doc["weights"].as_str().unwrap().contains("embedded"));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "both references match the filter");
    for r in results {
        assert!(r["variant"].as_str().unwrap().starts_with("reference"));
        assert!(r["backend"].is_string() && r["precision"].is_string());
        assert_eq!(r["streams"], 1);
        assert!(r["tok_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["ns_per_token"].as_f64().unwrap() > 0.0);
        assert!(r["max_abs_logit_diff"].is_number());
        assert!(r["token_agreement"].as_f64().unwrap() > 0.5);
        assert_eq!(r["names"].as_array().unwrap().len(), 20);
    }
    let reference = &results[0];
    assert_eq!(reference["variant"], "reference");
    assert_eq!(reference["token_agreement"], 1.0);
}

/// A short run of the two references with `extra` flags: its stdout and JSON.
fn short_run(json: &std::path::Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = example("bench")
        .args(["--variant", "reference", "--tokens", "200", "--min-window", "0"])
        .args([
            "--repeats",
            "3",
            "--check-tokens",
            "64",
            "--latency-samples",
            "500",
        ])
        .args(extra)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (out, doc)
}

#[test]
fn a_saved_run_is_compared_row_by_row_and_latency_reported() {
    let saved = tmp("saved.json");
    let now = tmp("now.json");
    let (_, first) = short_run(&saved, &[]);
    for r in first["results"].as_array().unwrap() {
        let l = &r["latency_ns"];
        assert_eq!(l["samples"], 500, "{l}");
        assert!(l["p50"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
        let ci = r["tok_per_s_ci"].as_array().unwrap();
        assert!(ci[0].as_f64() <= r["tok_per_s"].as_f64() && r["tok_per_s"].as_f64() <= ci[1].as_f64());
    }
    let (out, doc) = short_run(&now, &["--baseline", saved.to_str().unwrap(), "--wide"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("vs baseline") && stdout.contains("change CI") && stdout.contains("p99.9"));
    for r in doc["results"].as_array().unwrap() {
        let v = &r["vs_baseline"];
        assert!(
            ["faster", "slower", "same"].contains(&v["verdict"].as_str().unwrap()),
            "{v}"
        );
    }

    // A saved run of another shape is refused before anything runs.
    let out = example("bench")
        .args([
            "--shape",
            "embd=8,heads=2",
            "--variant",
            "reference",
            "--baseline",
        ])
        .arg(&saved)
        .output()
        .unwrap();
    one_line_error(&out, "was run at shape vocab=27,block=16,embd=16");
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out.stdout));
    // So is a file that is not a saved run.
    std::fs::write(&now, "[1, 2]").unwrap();
    let out = example("bench").arg("--baseline").arg(&now).output().unwrap();
    one_line_error(&out, "no \"results\" list");
    std::fs::remove_file(&saved).unwrap();
    std::fs::remove_file(&now).unwrap();
}

#[test]
fn another_shape_runs_with_random_weights() {
    let out = example("bench")
        .args([
            "--shape",
            "embd=8,heads=2,layers=2,mlp=16",
            "--variant",
            "reference",
        ])
        .args([
            "--tokens",
            "100",
            "--min-window",
            "0",
            "--repeats",
            "1",
            "--check-tokens",
            "32",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("random init"), "{stdout}");
    assert!(stdout.contains("embd=8"), "{stdout}");
}

#[test]
fn a_missing_flag_or_a_bad_value_is_named_in_the_one_line() {
    let out = example("train").output().unwrap();
    one_line_error(&out, "--data");
    let out = example("bench").args(["--variants", "x"]).output().unwrap();
    one_line_error(&out, "tip: a similar argument exists: '--variant'");
}

#[test]
fn train_writes_loadable_weights_and_rejects_bad_data() {
    let data = tmp("names.txt");
    std::fs::write(&data, "anna\nbob\ncarla\ndave\n").unwrap();
    let weights = tmp("w.safetensors");
    let out = example("train")
        .arg("--data")
        .arg(&data)
        .args(["--steps", "30", "--batch", "2", "--threads", "1", "--out"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("NLL on") && stdout.contains("sample 20: "),
        "{stdout}"
    );
    let w = microgpt::weights::load(&weights, &Default::default()).unwrap();
    assert_eq!(*w.shape(), microgpt::model::Shape::DEFAULT);
    std::fs::remove_file(&weights).unwrap();

    std::fs::write(&data, "anna\nBob\n").unwrap();
    let out = example("train").arg("--data").arg(&data).output().unwrap();
    one_line_error(&out, "character 'B' has no token");
    std::fs::remove_file(&data).unwrap();
}

#[test]
fn options_out_of_range_are_refused_before_anything_runs() {
    for (args, needle) in [
        (&["--seed", "0"][..], "--seed must not be 0"),
        (
            &["--temperature", "1e-10"],
            "--temperature must be a number >= 0.001",
        ),
        (
            &["--repeats", "18446744073709551615"],
            "--repeats must be 1 to 1000",
        ),
        (&["--tokens", "18446744073709551615"], "--tokens must be at most"),
        (&["--check-tokens", "0"], "--check-tokens must be 1 to"),
        (
            &["--latency-samples", "1000000000"],
            "--latency-samples must be 0 to",
        ),
        (&["--baseline", "/nonexistent/saved.json"], "cannot read"),
        (&["--format", "q412"], "--format applies to the file of --weights"),
    ] {
        one_line_error(&example("bench").args(args).output().unwrap(), needle);
    }
    let json = std::env::temp_dir()
        .join(format!("microgpt-cli-{}-no-such-folder", std::process::id()))
        .join("out.json");
    let out = example("bench").arg("--json").arg(&json).output().unwrap();
    one_line_error(&out, "cannot write");
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out.stdout));
}

#[test]
fn weights_beyond_fp32_are_refused_not_reported_as_a_bug() {
    // The default shape's 4192 parameters, all 1e30: finite, but their squares overflow fp32.
    let big = tmp("big.bin");
    let json = tmp("big.json");
    let bytes: Vec<u8> = (0..4192).flat_map(|_| 1e30f32.to_le_bytes()).collect();
    std::fs::write(&big, bytes).unwrap();
    let out = example("bench")
        .arg("--weights")
        .arg(&big)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    std::fs::remove_file(&big).unwrap();
    one_line_error(&out, "out of fp32's range");
    assert!(!json.exists(), "no empty JSON file left behind");
}

#[test]
fn inspect_refuses_shapes_too_large_to_unroll() {
    // Few weights, but every position's step unrolled over up to 255 older ones.
    let out = example("inspect")
        .args(["rust", "--shape", "block=256,embd=4,heads=1,mlp=4"])
        .output()
        .unwrap();
    one_line_error(&out, "too large to unroll");
}

/// A reader that stops early (`inspect rust | head`) ends the example quietly, by SIGPIPE as
/// other command-line tools end, instead of a panic (exit 101).
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_examples_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = example("inspect")
        .args(["rust", "--target", "scalar", "--precision", "f32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The read end is closed here; the rest (hundreds of KB) no longer fits in the pipe.
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
}
