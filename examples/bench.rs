//! The main job: every registered variant, checked against its oracle and timed side by side.
//!
//! ```text
//! cargo run --release --example bench
//! cargo run --release --example bench -- --names --variant reference
//! cargo run --release --example bench -- --weights path/to/weights_fp32.bin --json out.json
//! cargo run --release --example bench -- --sweep --chart results/charts
//! cargo run --release --example bench -- --variant x16 --soak 60
//! cargo run --release --example bench -- --json new.json --baseline old.json
//! ```

mod common;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use microgpt::bench::baseline::Baseline;
use microgpt::bench::charts::{self, Bar, Percentiles, Point};
use microgpt::bench::harness::{BenchOptions, Event, Outcome, Row, run_all};
use microgpt::bench::latency;
use microgpt::bench::machine::Machine;
use microgpt::bench::report::{Report, human_rate};
use microgpt::bench::roof::Roof;
use microgpt::bench::soak;
use microgpt::model::Shape;
use microgpt::runtime::{Precision, VariantSpec};
use microgpt::talos::CLAIMED_TOK_PER_S as TALOS_CLAIMED_TOK_PER_S;
use microgpt::weights::{Format, LoadOptions, Weights, default_weights, load};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Benchmark every generated variant of microGPT against the reference and TALOS-V2.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// Also generate 20 names with each variant.
    #[arg(long)]
    names: bool,
    /// Weights file (safetensors, a raw f32/Q4.12 blob) or TALOS-V2 ROM folder.
    /// Default: the embedded trained weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Force the weights format: safetensors, f32, q412, talos-hex.
    #[arg(long, value_parser = |s: &str| s.parse::<Format>())]
    format: Option<Format>,
    /// Model shape, e.g. `vocab=27,block=16,embd=32,heads=4,layers=2,mlp=128` (fields left out
    /// keep their defaults). Without --weights, a shape other than the default gets a random init
    /// seeded by --seed (the default shape keeps the embedded trained weights).
    #[arg(long, value_parser = |s: &str| Shape::parse(s).map_err(|e| e.to_string()))]
    shape: Option<Shape>,
    /// Only variants whose name contains this text.
    #[arg(long)]
    variant: Option<String>,
    /// Minimum tokens per timed window (at most 10^12).
    #[arg(long, default_value_t = 10_000)]
    tokens: u64,
    /// Minimum seconds per timed window (0 to 3600).
    #[arg(long, default_value_t = 0.2)]
    min_window: f64,
    /// Timed windows per variant, 1 to 1000 (the median is reported, with its 95% bootstrap
    /// interval).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Single steps timed one by one for the latency percentiles of each single-stream row
    /// (0: none; at most 10^8).
    #[arg(long, default_value_t = microgpt::bench::latency::DEFAULT_SAMPLES)]
    latency_samples: u64,
    /// Compare every row with the same row of a saved `--json` run (same shape): the change of
    /// the median, its 95% interval and a verdict (faster, slower, same).
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Print every column (the JSON always has them all); by default the table fits 120 columns.
    #[arg(long)]
    wide: bool,
    /// Teacher-forced steps compared with each variant's oracle (1 to 10^8).
    #[arg(long, default_value_t = 4096)]
    check_tokens: usize,
    /// RNG seed of the sampler (xorshift32, not 0), and of the random weights of --shape.
    #[arg(long, default_value_t = 42)]
    seed: u32,
    /// Sampling temperature (>= 0.001).
    #[arg(long, default_value_t = 0.5)]
    temperature: f32,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// List the registered variants and exit.
    #[arg(long)]
    list: bool,
    /// Say whether NVRTC (the compiler of the CUDA rows' kernels) loads here, and exit: 0 when
    /// it does, 1 with the reason when not.
    #[arg(long)]
    nvrtc_check: bool,
    /// Assumed watts per busy core, for perf-per-watt where no energy counters are readable.
    #[arg(long, default_value_t = microgpt::bench::energy::DEFAULT_WATTS_PER_CORE)]
    watts_per_core: f64,
    /// Write SVG charts into this folder: throughput, perf-per-watt, and the sweep (with --sweep).
    #[arg(long, value_name = "DIR")]
    chart: Option<PathBuf>,
    /// Also run the shape sweep: the JIT and references over embd 16..64 x layers 1..4, the
    /// proc-macro kernels on their shapes (random weights).
    #[arg(long)]
    sweep: bool,
    /// Then run the fastest fp32 and the fastest Q4.12 variant this long each (seconds),
    /// spot-checking against the reference about once a second.
    #[arg(long, value_name = "SECONDS")]
    soak: Option<f64>,
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    #[cfg(feature = "peers")]
    unsafe {
        microgpt::bench::peers::pin_threads();
    }
    let args = match common::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.nvrtc_check {
        return match microgpt::cuda::nvrtc_status() {
            Ok(()) => {
                println!("NVRTC loads");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("{why}");
                ExitCode::from(1)
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let options = bench_options(&args)?;
    let specs = microgpt::registry();
    if args.list {
        list(&specs);
        return Ok(());
    }
    if let Some(f) = &args.variant {
        check_filter(&specs, f)?;
    }
    let weights = load_weights(&args)?;
    let machine = Machine::detect();
    let baseline = match &args.baseline {
        Some(path) => Some(load_baseline(path, &weights, &machine)?),
        None => None,
    };
    microgpt::runtime::check::check_fp32_range(
        &weights,
        &microgpt::runtime::check::CheckOptions {
            tokens: 64,
            ..options.check()
        },
    )?;

    let roof = Roof::measure(0.5);
    let report_header = Report {
        machine: &machine,
        shape: *weights.shape(),
        weights: weights.source(),
        options: &options,
        outcomes: &[],
        roof: Some(&roof),
        roof_after: None,
        baseline: baseline.as_ref(),
        wide: args.wide,
    };
    print!("{}", report_header.header());
    let _ = std::io::stdout().flush();

    let live = std::io::stderr().is_terminal();
    let outcomes = run_rows(&args, &specs, &weights, &options, live);
    // Measured again: a roof that moved says the machine was disturbed while the rows ran.
    let roof_after = Roof::measure(0.5);
    let report = Report {
        outcomes: &outcomes,
        roof_after: Some(&roof_after),
        ..report_header
    };
    println!();
    print!("{}", report.table());

    let mut doc = report.json();
    // Written now, and again at the end with the sweep and the soak: a later failure (no row for
    // the charts) leaves the table's JSON behind.
    write_json(args.json.as_deref(), &doc)?;

    if let Some(dir) = &args.chart {
        write_charts(dir, &report)?;
    }
    if args.sweep {
        doc["sweep"] = json!(run_sweep(
            &specs,
            &options,
            args.chart.as_deref(),
            &machine,
            live
        )?);
    }
    if let Some(seconds) = args.soak {
        doc["soak"] = json!(run_soaks(&specs, &weights, &options, &outcomes, seconds, live)?);
    }

    if let Some(path) = &args.json {
        write_json(Some(path), &doc)?;
        println!("wrote {}", path.display());
    }
    let bad = failures(&outcomes, &doc);
    if !bad.is_empty() {
        eprintln!("error: tokens differ from the oracle (a bug): {}", bad.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

/// The bench's options from the flags, each checked (with the flag named when it is wrong), and
/// the output paths made ready: the chart folder created, the JSON file found writable.
fn bench_options(args: &Args) -> Result<BenchOptions, String> {
    let options = BenchOptions {
        seed: args.seed,
        temperature: args.temperature,
        min_tokens: args.tokens.max(1),
        min_window_s: args.min_window,
        repeats: args.repeats,
        latency_samples: args.latency_samples,
        check_tokens: args.check_tokens,
        names: if args.names { 20 } else { 0 },
        watts_per_core: args.watts_per_core,
        ..BenchOptions::default()
    };
    options.validate()?;
    if let Some(s) = args.soak
        && !(s.is_finite() && s > 0.0)
    {
        return Err(format!("--soak must be a positive number of seconds, got {s}"));
    }
    if args.format.is_some() && args.weights.is_none() {
        return Err("--format applies to the file of --weights, and none was given".into());
    }
    if let Some(dir) = &args.chart {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    // The JSON is written once the table is done: find out now whether it can be (leaving no
    // empty file behind).
    if let Some(path) = &args.json {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("--json {}: cannot write: {e}", path.display()))?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(options)
}

/// `--baseline`: the saved run, refused when it was run at another shape (its rows would not be
/// the same computation); a warning when it came from another CPU or other weights.
fn load_baseline(path: &std::path::Path, weights: &Weights, machine: &Machine) -> Result<Baseline, String> {
    let b = Baseline::load(path)?;
    let shape = *weights.shape();
    if b.shape != shape {
        return Err(format!(
            "--baseline {} was run at shape {}, this run is at {shape} (run with --shape {})",
            path.display(),
            b.shape,
            b.shape
        ));
    }
    let mut differ = Vec::new();
    if b.cpu != machine.cpu {
        differ.push(format!("on {}, this machine is {}", b.cpu, machine.cpu));
    }
    if b.weights != weights.source() {
        differ.push(format!("with {}, this run has {}", b.weights, weights.source()));
    }
    if !differ.is_empty() {
        eprintln!(
            "warning: --baseline {} was run {}: each change mixes the two",
            path.display(),
            differ.join("; and ")
        );
    }
    Ok(b)
}

/// `--list`: every registered variant, its backend, precision and shape.
fn list(specs: &[VariantSpec]) {
    for s in specs {
        let shape = s.shape.map_or("any shape".to_string(), |shape| shape.to_string());
        println!(
            "{:24} {:12} {:6} {shape}",
            s.name,
            s.backend,
            s.precision.to_string()
        );
    }
}

/// Refuses a `--variant` filter that matches no variant, listing the names.
fn check_filter(specs: &[VariantSpec], filter: &str) -> Result<(), String> {
    if specs.iter().any(|s| s.name.contains(filter)) {
        return Ok(());
    }
    let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    let peers = if cfg!(feature = "peers") {
        ""
    } else {
        "; the candle row needs --features peers"
    };
    Err(format!(
        "no variant matches `{filter}` (variants: {}{peers})",
        names.join(", ")
    ))
}

/// `--weights` (with `--format` and `--shape`), random weights of `--shape`, or the embedded ones.
fn load_weights(args: &Args) -> Result<Weights, String> {
    Ok(match (&args.weights, args.shape) {
        (Some(path), shape) => load(
            path,
            &LoadOptions {
                format: args.format,
                shape,
            },
        )
        .map_err(|e| e.to_string())?,
        (None, Some(shape)) if shape != Shape::DEFAULT => Weights::random(shape, args.seed as u64, 0.08),
        (None, _) => default_weights(),
    })
}

/// Every selected row prepared, checked and timed, with its progress on standard error (one
/// updated line on a terminal, a line per row otherwise).
fn run_rows(
    args: &Args,
    specs: &[VariantSpec],
    weights: &Weights,
    options: &BenchOptions,
    live: bool,
) -> Vec<Outcome> {
    let shape = *weights.shape();
    let keep = |s: &VariantSpec| args.variant.as_deref().is_none_or(|f| s.name.contains(f));
    // The rows that will be prepared: those of other shapes are only listed as skipped.
    let selected = specs
        .iter()
        .filter(|s| keep(s))
        .filter(|s| s.shape.is_none_or(|sh| sh == shape))
        .count();
    let progress = Progress::new(selected as u64, live);
    let mut done = 0;
    let outcomes = run_all(specs, weights, options, &keep, &mut |event| {
        let (name, what) = match event {
            Event::Preparing(name) => {
                done += 1;
                (name, "preparing")
            }
            Event::Checking(name) => (name, "checking against its oracle"),
            Event::Timing(name) => (name, "timing"),
        };
        if live || matches!(event, Event::Preparing(_)) {
            progress.show(done - 1, &format!("[{done}/{selected}] {name}"), what);
        }
    });
    progress.finish();
    outcomes
}

/// Progress of long work on standard error: a bar on a terminal, a plain line per item
/// otherwise (a log keeps every line, without control characters).
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(len: u64, live: bool) -> Progress {
        let bar = live.then(|| {
            let bar = ProgressBar::new(len.max(1));
            bar.set_style(
                ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} {elapsed:>4} {msg}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar
        });
        Progress { bar }
    }

    /// `done` items finished; `item` is the one under way, `what` its stage (terminal only).
    fn show(&self, done: u64, item: &str, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(format!("{item}: {what}"));
            }
            None => eprintln!("{item}"),
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `--sweep`: the shape sweep printed (and drawn into `chart`), as the JSON's `sweep` list.
fn run_sweep(
    specs: &[VariantSpec],
    options: &BenchOptions,
    chart: Option<&std::path::Path>,
    machine: &Machine,
    live: bool,
) -> Result<Vec<serde_json::Value>, String> {
    let mut progress: Option<Progress> = None;
    let rows = microgpt::bench::sweep::run(specs, options, &mut |i, n, shape| {
        progress
            .get_or_insert_with(|| Progress::new(n as u64, live))
            .show(i as u64, &format!("[sweep {}/{n}] {shape}", i + 1), "timing");
    });
    if let Some(p) = progress {
        p.finish();
    }
    println!("\nshape sweep (random weights; the fastest variant of each series per shape):");
    print!("{}", microgpt::bench::sweep::table(&rows));
    if let Some(dir) = chart {
        let points: Vec<Point> = rows
            .iter()
            .map(|r| Point {
                series: r.series.clone(),
                macs: r.macs as f64,
                tok_per_s: r.tok_per_s,
            })
            .collect();
        let path = dir.join("sweep.svg");
        charts::sweep(
            &path,
            &format!("Cost against model size ({})", machine.cpu),
            &points,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "shape": r.shape.to_string(),
                "weight_macs": r.macs,
                "series": r.series,
                "variant": r.variant,
                "tok_per_s": r.tok_per_s,
                "agreed": r.agreed,
            })
        })
        .collect())
}

/// The rows whose tokens differ from their oracle's, in the table or in a soak: each a bug.
fn failures<'a>(outcomes: &'a [Outcome], doc: &'a serde_json::Value) -> Vec<&'a str> {
    let mut bad: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ran(row) if row.mismatched() => Some(row.info.name.as_str()),
            _ => None,
        })
        .collect();
    if let Some(soaks) = doc["soak"].as_array() {
        bad.extend(
            soaks
                .iter()
                .filter(|s| s["divergences"].as_u64() != Some(0))
                .filter_map(|s| s["variant"].as_str()),
        );
    }
    bad
}

fn write_json(path: Option<&std::path::Path>, doc: &serde_json::Value) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(doc).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// Throughput (log axis, TALOS-V2's line) and tokens per joule of every row that ran.
fn write_charts(dir: &std::path::Path, report: &Report) -> Result<(), String> {
    let rows: Vec<&Row> = report
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ran(row) => Some(row.as_ref()),
            Outcome::Skipped { .. } => None,
        })
        .collect();
    if rows.is_empty() {
        return Err("--chart: no variant ran".into());
    }
    let cpu = &report.machine.cpu;
    let mut speed: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: r.info.name.clone(),
            value: r.timing.tok_per_s,
            group: r.info.backend.clone(),
        })
        .collect();
    speed.extend(rows.iter().filter_map(|r| r.info.modelled.as_ref()).map(|m| Bar {
        label: m.name.clone(),
        value: m.tok_per_s,
        group: format!("{} (modelled)", m.backend),
    }));
    let path = dir.join("throughput.svg");
    let line = format!("TALOS-V2 FPGA, {} tok/s", human_rate(TALOS_CLAIMED_TOK_PER_S));
    charts::bars(
        &path,
        &format!("microGPT tokens per second ({cpu})"),
        "tokens / s (log)",
        &speed,
        Some((TALOS_CLAIMED_TOK_PER_S, &line)),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    write_latency_chart(dir, &rows, cpu)?;
    let measured = rows.iter().all(|r| r.timing.power.is_measured());
    let unmeasured = rows.len() - rows.iter().filter(|r| r.timing.power.watts().is_some()).count();
    let energy: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            Some(Bar {
                label: r.info.name.clone(),
                value: r.timing.power.tok_per_joule(r.timing.tok_per_s)?,
                group: r.info.backend.clone(),
            })
        })
        .collect();
    if energy.is_empty() {
        println!("no perf-per-watt chart: no row's power is known");
        return Ok(());
    }
    if unmeasured > 0 {
        println!("perf-per-watt chart: {unmeasured} row(s) left out (power not measured)");
    }
    let title = if measured {
        format!("Tokens per joule, measured ({cpu})")
    } else {
        format!(
            "Tokens per joule, ESTIMATED at {} W per core used ({cpu})",
            report.options.watts_per_core
        )
    };
    let path = dir.join("perf-per-watt.svg");
    charts::bars(&path, &title, "tokens / joule (log)", &energy, None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Per-token latency against percentile: every single-stream row, and the FPGA's modelled one.
fn write_latency_chart(dir: &std::path::Path, rows: &[&Row], cpu: &str) -> Result<(), String> {
    let mut series: Vec<Percentiles> = rows
        .iter()
        .filter_map(|r| {
            Some(Percentiles {
                series: r.info.name.clone(),
                points: r.timing.latency.as_ref()?.curve.clone(),
            })
        })
        .collect();
    series.extend(rows.iter().filter_map(|r| {
        let m = r.info.modelled.as_ref()?;
        Some(Percentiles {
            series: format!("{} (modelled)", m.name),
            points: latency::exact(&m.step_latency_ns)?.curve,
        })
    }));
    if series.is_empty() {
        println!("no latency chart: no single-stream row ran (or --latency-samples 0)");
        return Ok(());
    }
    let path = dir.join("latency.svg");
    charts::latency(
        &path,
        &format!("Per-token latency by percentile ({cpu})"),
        &series,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Soaks the fastest fp32 and the fastest Q4.12 row that ran and agreed with its oracle.
fn run_soaks(
    specs: &[VariantSpec],
    weights: &Weights,
    options: &BenchOptions,
    outcomes: &[Outcome],
    seconds: f64,
    live: bool,
) -> Result<Vec<serde_json::Value>, String> {
    let settings = options.settings();
    let mut out = Vec::new();
    for precision in [Precision::F32, Precision::Q412] {
        let best = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ran(row) if row.info.precision == precision && !row.mismatched() => Some(row),
                _ => None,
            })
            .max_by(|a, b| a.timing.tok_per_s.total_cmp(&b.timing.tok_per_s));
        let Some(best) = best else {
            println!("\nsoak: no {precision} row ran and agreed with its oracle: no {precision} soak");
            continue;
        };
        let spec = specs
            .iter()
            .find(|s| s.name == best.info.name)
            .expect("rows come from specs");
        let mut variant = spec.prepare(weights, &settings).map_err(|e| e.to_string())?;
        let Some(mut oracle) = variant.info().oracle.build(weights, &settings) else {
            println!(
                "\nsoak: {} has no oracle to spot-check against: not soaked",
                spec.name
            );
            continue;
        };
        println!(
            "\nsoak: {} for {seconds} s against {}",
            spec.name,
            oracle.info().name
        );
        // The bar counts tenths of a second of the soak.
        let progress = Progress::new((seconds * 10.0).ceil() as u64, live);
        let mut last_line = 0.0;
        let report = soak::soak(variant.as_mut(), oracle.as_mut(), seconds, options, &mut |s| {
            let line = format!(
                "soak {}: {} tokens, {} checks, {} divergences, {} tok/s",
                s.variant,
                s.tokens,
                s.checks,
                s.divergences,
                human_rate(s.tok_per_s())
            );
            // Without a terminal, a line every ten seconds.
            if live || s.seconds - last_line >= 10.0 {
                last_line = s.seconds;
                progress.show((s.seconds * 10.0) as u64, &line, "running");
            }
        });
        progress.finish();
        println!(
            "soak {}: {} tokens in {:.1} s ({} tok/s); {} spot checks ({} teacher-forced steps), {} divergences",
            report.variant,
            report.tokens,
            report.seconds,
            human_rate(report.tok_per_s()),
            report.checks,
            report.checked_steps,
            report.divergences
        );
        out.push(json!({
            "variant": report.variant,
            "oracle": report.oracle,
            "seconds": report.seconds,
            "tokens": report.tokens,
            "tok_per_s": report.tok_per_s(),
            "checks": report.checks,
            "checked_steps": report.checked_steps,
            "divergences": report.divergences,
        }));
    }
    Ok(out)
}
