//! The generated CUDA C, run on the CPU: `tests/cuda/emulator.h` supplies just enough CUDA (one
//! OS thread per CUDA thread, barriers for warp shuffles) for g++ to compile the rendered source
//! unchanged, and every kernel is checked against the scalar reference: the per-op kernels of
//! `cuda-naive`, the one-warp and one-thread steps teacher-forced (logits and draws), and the
//! persistent loops (several blocks, a partial last block, two launches continuing the same
//! streams) against the shared generation loop's checksums. No GPU needed; it says nothing about
//! speed. Needs g++ with C++20: outside CI the test skips with a message when it is missing.

use microgpt_cuda::{CudaSource, STREAM_THREADS, device_floats, render};
use microgpt_model::numerics::base2_query_scale;
use microgpt_model::{Buffer, Param, Shape};
use microgpt_runtime::check::fp32_logit_tolerance;
use microgpt_runtime::stream::stream_seed;
use microgpt_runtime::{Reference, Sampler, Stream};
use microgpt_testdata::props::{EDGE_TEMPERATURES, SAMPLER_EDGES};
use microgpt_weights::{Weights, default_weights};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const TEMPERATURE: f32 = 0.5;

struct Harness {
    dir: PathBuf,
    weights_file: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Compiles the harness for `weights`' shape; `None` (after a message) when g++ is missing
/// outside CI.
fn harness(weights: &Weights) -> Option<(Harness, CudaSource)> {
    let source = render(weights.shape());
    let s = weights.shape();
    // One directory per harness: tests run in parallel, some with the same shape.
    static HARNESSES: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "microgpt-cuda-emu-{}-{}x{}-{}",
        std::process::id(),
        s.embd,
        s.layers,
        HARNESSES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let h = Harness {
        weights_file: dir.join("weights.f32"),
        dir,
    };
    std::fs::write(h.dir.join("emulator.h"), include_str!("cuda/emulator.h")).unwrap();
    std::fs::write(h.dir.join("harness.cpp"), include_str!("cuda/harness.cpp")).unwrap();
    std::fs::write(h.dir.join("microgpt.cu"), &source.text).unwrap();
    std::fs::write(h.dir.join("ops.inc"), source.op_kernels.join(",\n") + "\n").unwrap();
    let bytes: Vec<u8> = device_floats(weights)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&h.weights_file, bytes).unwrap();
    let out = match Command::new("g++")
        .args([
            "-std=c++20",
            "-O1",
            "-pthread",
            "-w",
            "harness.cpp",
            "-o",
            "harness",
        ])
        .current_dir(&h.dir)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI needs g++ for the CUDA emulation tests: {e}");
            }
            eprintln!("skipping the emulated CUDA checks: g++ not found ({e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "g++ failed on the generated CUDA C:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((h, source))
}

impl Harness {
    fn run(&self, args: &[String], input: &str) -> String {
        self.run_at(args, input, TEMPERATURE)
    }

    /// Runs the harness with the kernels' temperature set to `temperature`.
    fn run_at(&self, args: &[String], input: &str, temperature: f32) -> String {
        let mut child = Command::new(self.dir.join("harness"))
            .env("MG_TEMPERATURE", temperature.to_string())
            .arg(&self.weights_file)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "harness {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Teacher-forced steps: the reference's own benchmark stream (restarts included) and one
/// sequence through every position.
fn steps(weights: &Weights, count: usize) -> Vec<(usize, usize, f32)> {
    let shape = *weights.shape();
    let mut reference = Reference::<f32>::new(weights);
    let mut sampler = Sampler::new(TEMPERATURE);
    let mut stream = Stream::new(&shape, 42);
    let mut out = Vec::new();
    for _ in 0..count {
        let r = stream.rng.uniform();
        out.push((stream.tok, stream.pos, r));
        let next = sampler.draw(reference.forward(stream.tok, stream.pos), r);
        stream.advance(next);
    }
    for pos in 0..shape.block {
        out.push(((pos * 7 + 3) % shape.vocab, pos, 0.5));
    }
    out
}

fn check_steps(h: &Harness, weights: &Weights, mode: &str) {
    check_steps_at(h, weights, mode, &steps(weights, 40), TEMPERATURE);
}

/// Teacher-forced `steps` (token, position, uniform) in `mode` at `temperature`: logits within
/// `fp32_logit_tolerance` of the reference's, draws the reference's unless within 1e-5 of a
/// boundary of its CDF.
fn check_steps_at(
    h: &Harness,
    weights: &Weights,
    mode: &str,
    steps: &[(usize, usize, f32)],
    temperature: f32,
) {
    let input: String = steps
        .iter()
        .map(|(t, p, r)| format!("{t} {p} {}\n", r.to_bits()))
        .collect();
    let out = h.run_at(&[mode.to_string()], &input, temperature);
    let mut reference = Reference::<f32>::new(weights);
    let mut exact = Reference::<f64>::new(weights);
    let mut sampler = Sampler::new(temperature);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), steps.len(), "{mode}: one line per step");
    for (line, &(tok, pos, r)) in lines.iter().zip(steps) {
        let mut fields = line.split(' ');
        let next: i64 = fields.next().unwrap().parse().unwrap();
        let logits: Vec<f32> = fields.map(|f| f.parse().unwrap()).collect();
        let want = reference.forward(tok, pos).to_vec();
        let tolerance = fp32_logit_tolerance(&want, exact.forward(tok, pos));
        for (a, b) in logits.iter().zip(&want) {
            assert!(
                ((a - b).abs() as f64) <= tolerance,
                "{mode}: {}: tok {tok} pos {pos}: logit {a} vs reference {b} (tolerance {tolerance:.2e})",
                weights.shape()
            );
        }
        assert_eq!(logits.len(), want.len());
        let drawn = sampler.draw(&want, r);
        if next >= 0 && next as usize != drawn {
            assert!(
                sampler.boundary_distance(r) < 1e-5,
                "{mode}: tok {tok} pos {pos}: drew {next}, the reference {drawn}"
            );
        }
    }
}

/// Runs `streams` streams `launches` × `steps` steps in `mode`, and compares every launch's
/// checksums with the reference in the shared generation loop.
fn check_loop(h: &Harness, weights: &Weights, mode: &str, per_block: usize, streams: usize) {
    let (steps, launches) = (24u64, 2);
    let shape = *weights.shape();
    let mut references: Vec<(Reference<f32>, Stream)> = (0..streams)
        .map(|s| (Reference::new(weights), Stream::new(&shape, stream_seed(42, s))))
        .collect();
    let input: String = references
        .iter()
        .map(|(_, s)| format!("{} {} {}\n", s.tok, s.pos, s.rng.state()))
        .collect();
    let args = [
        mode,
        &per_block.to_string(),
        &streams.to_string(),
        &steps.to_string(),
        &launches.to_string(),
    ]
    .map(String::from);
    let out = h.run(&args, &input);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), launches, "{mode}: one line per launch");
    let mut sampler = Sampler::new(TEMPERATURE);
    for (launch, line) in lines.iter().enumerate() {
        let got: Vec<u64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!(got.len(), streams);
        for (s, (reference, stream)) in references.iter_mut().enumerate() {
            let want = stream.run(steps, |t, p, r| sampler.draw(reference.forward(t, p), r));
            assert_eq!(
                got[s], want,
                "{mode}: launch {launch}, stream {s}: checksums differ"
            );
        }
    }
}

/// Every single-step kernel: the per-op kernels and the warp, lane, lane-table and thread steps.
const STEP_MODES: [&str; 5] = ["naive", "warp", "lanes", "lanes-table", "thread"];

fn check_all(weights: &Weights) {
    let Some((h, _source)) = harness(weights) else {
        return;
    };
    for mode in STEP_MODES {
        check_steps(&h, weights, mode);
    }
    // One warp (mg_persistent, then mg_persistent_table, two one-warp blocks); two blocks of two
    // warps, the last one partial (mg_streams_warp); then two blocks of threads, ditto (the KV
    // caches interleave within a block).
    check_loop(&h, weights, "persistent", 1, 1);
    check_loop(&h, weights, "persistent-table", 1, 2);
    check_loop(&h, weights, "persistent", 2, 3);
    check_loop(&h, weights, "streams", STREAM_THREADS, STREAM_THREADS + 9);
}

#[test]
fn default_shape_matches_the_reference() {
    check_all(&default_weights());
}

#[test]
fn larger_shape_matches_the_reference() {
    check_all(&Weights::random(
        Shape::parse("embd=32,layers=2,mlp=128").unwrap(),
        5,
        0.3,
    ));
}

#[test]
fn two_layers_with_cache_positions_in_shared_memory_match_the_reference() {
    // mg_streams keeps position 0 of both layers' caches in shared memory here (the default
    // shape covers one layer; the larger shape keeps none).
    let weights = Weights::random(Shape::parse("embd=16,layers=2").unwrap(), 13, 0.3);
    assert_eq!(render(weights.shape()).kv_shared_positions, 1);
    check_all(&weights);
}

#[test]
fn a_shape_wider_than_a_warp_matches_the_reference() {
    // embd 64, a 40-token block and 40 token ids: lanes loop over rows, positions and logits
    // more than once.
    check_all(&Weights::random(
        Shape::parse("vocab=40,block=40,embd=64,heads=2,layers=1,mlp=96").unwrap(),
        9,
        0.2,
    ));
}

#[test]
fn a_shape_off_the_fast_paths_matches_the_reference() {
    // Three heads do not divide a warp (the heads take turns in the warp attention), rows of 18
    // and 202 are not multiples of 4 (the thread kernels read weights one at a time), and the
    // lane step's shared buffers (204 floats each) do not fit over the warp step's buffers, so
    // they go after the rest of the scratch, in the lane kernels' longer one.
    let shape = Shape::parse("embd=18,heads=3,layers=1,mlp=202").unwrap();
    let src = render(&shape);
    assert!(src.text.contains("#define MG_S_SHARE 1024\n"));
    assert_eq!((src.scratch_floats, src.lane_scratch_floats), (1024, 1440));
    check_all(&Weights::random(shape, 11, 0.3));
}

#[test]
fn a_small_shape_off_the_fast_paths_matches_the_reference() {
    // Few enough weights that the matvecs load them unconditionally (MG_HOIST) and the table step
    // reads its matvecs' inputs whole: rows of 18 and 20 floats, four at a time and two alone.
    let shape = Shape::parse("embd=18,heads=3,layers=1,mlp=20").unwrap();
    let src = render(&shape);
    assert!(src.text.contains("#define MG_HOIST 1\n"));
    assert!(src.text.contains("mg_l_matvec<18, 20, false, false, 18, true>"));
    check_all(&Weights::random(shape, 17, 0.3));
}

#[test]
fn two_tokens_eight_heads_three_layers_match_the_reference() {
    // Found by the property test below: at these weights the per-op kernels' logits differ from
    // the reference's by 2.6e-4 at a logit of -1.3, more than a fixed 1e-4 but within four times
    // the fp32 reference's own error against f64 at that step, which the check allows.
    let shape = Shape::parse("vocab=2,block=18,embd=64,heads=8,layers=3,mlp=247").unwrap();
    check_all(&Weights::random(shape, 17481431091504137410, 1.0));
}

/// The most any older position's score exceeds the step's own, over the steps of [`check_all`]
/// (in base 2, as the kernels take the scores; the first layer).
fn largest_score_above_the_own(weights: &Weights) -> f32 {
    let shape = *weights.shape();
    let (e, hd) = (shape.embd, shape.head_dim());
    let scale = base2_query_scale(&shape);
    let mut reference = Reference::<f32>::new(weights);
    let mut most = f32::NEG_INFINITY;
    for (tok, pos, _) in steps(weights, 40) {
        reference.forward(tok, pos);
        let q = reference.buffer(Buffer::Q);
        let keys = reference.cache(0).0;
        let score = |t: usize, h: usize| -> f32 {
            (0..hd)
                .map(|c| q[h * hd + c] * keys[t * e + h * hd + c])
                .sum::<f32>()
                * scale
        };
        for h in 0..shape.heads {
            for t in 0..pos {
                most = most.max(score(t, h) - score(pos, h));
            }
        }
    }
    most
}

#[test]
fn attention_scores_far_above_the_own_one_match_the_reference() {
    // The queries scaled up until older positions score more than 128 (in base 2) above the
    // step's own position: relative to its own score their weights overflow, so the lane step
    // must take them again relative to the maximum (without it the logits come out NaN).
    let mut weights = Weights::random(Shape::default(), 17, 0.3);
    let wq = weights.layout().tensor(Param::Wq(0)).range();
    for v in &mut weights.data_mut()[wq] {
        *v *= 60.0;
    }
    let most = largest_score_above_the_own(&weights);
    assert!(most > 128.0, "scores only {most} above the own");
    check_all(&weights);
}

/// The sampler's edges in every kernel that draws: `r` at 0, 2^-24, 1/2 and 1 - 2^-24 (where the
/// last CDF entry can fall below `r`: the last token, never token 0), for logits all equal, of
/// the trained weights' spread and four times it, at temperatures 0.001, 0.5 and 100.
#[test]
fn sampler_edges_match_the_reference() {
    let trained = default_weights();
    let Some((h, _source)) = harness(&trained) else {
        return;
    };
    let zeros = Weights::new(Shape::DEFAULT, vec![0.0; Shape::DEFAULT.param_count()], "zeros").unwrap();
    let mut far = trained.clone();
    for w in far.data_mut() {
        *w *= 4.0;
    }
    for weights in [&zeros, &trained, &far] {
        // The same shape: only the weights file changes.
        let bytes: Vec<u8> = device_floats(weights)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&h.weights_file, bytes).unwrap();
        // Every position with each uniform, in one run per mode and temperature.
        let steps: Vec<(usize, usize, f32)> = SAMPLER_EDGES
            .into_iter()
            .flat_map(|r| {
                (0..Shape::DEFAULT.block).map(move |pos| ((pos * 5 + 26) % Shape::DEFAULT.vocab, pos, r))
            })
            .collect();
        for temperature in EDGE_TEMPERATURES {
            for mode in ["warp", "lanes", "lanes-table", "thread"] {
                check_steps_at(&h, weights, mode, &steps, temperature);
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(microgpt_testdata::props::config(3, 8))]

    /// Random valid shapes and weights at several scales: every single-step kernel teacher-forced
    /// against the reference (each case compiles the generated C++ once).
    #[test]
    fn random_shapes_match_the_reference(
        shape in microgpt_testdata::props::shapes(),
        scale in microgpt_testdata::props::scales(),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let weights = Weights::random(shape, seed, scale);
        let Some((h, _source)) = harness(&weights) else {
            return Ok(());
        };
        for mode in STEP_MODES {
            check_steps(&h, &weights, mode);
        }
    }
}
