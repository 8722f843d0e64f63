//! The main job: every registered variant, checked against its oracle and timed side by side.
//!
//! ```text
//! cargo run --release --example bench
//! cargo run --release --example bench -- --names --variant reference
//! cargo run --release --example bench -- --weights path/to/weights_fp32.bin --json out.json
//! ```

use clap::Parser;
use microgpt::model::Shape;
use microgpt::runtime::bench::{BenchOptions, Event, Outcome, run_all};
use microgpt::runtime::machine::Machine;
use microgpt::runtime::report::Report;
use microgpt::weights::{Format, LoadOptions, Weights, default_weights, load};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Benchmark every generated variant of microGPT against the reference and TALOS-V2.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Also generate 20 names with each variant.
    #[arg(long)]
    names: bool,
    /// Weights file (safetensors, the seed's raw f32/Q4.12 blob) or TALOS-V2 ROM folder.
    /// Default: the embedded trained weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Force the weights format: safetensors, f32, q412, talos-hex.
    #[arg(long, value_parser = |s: &str| s.parse::<Format>())]
    format: Option<Format>,
    /// Model shape, e.g. `vocab=27,block=16,embd=32,heads=4,layers=2,mlp=128` (fields left out
    /// keep their defaults). Without --weights, the weights are a seeded random init.
    #[arg(long, value_parser = |s: &str| Shape::parse(s).map_err(|e| e.to_string()))]
    shape: Option<Shape>,
    /// Only variants whose name contains this text.
    #[arg(long)]
    variant: Option<String>,
    /// Minimum tokens per timed window.
    #[arg(long, default_value_t = 10_000)]
    tokens: u64,
    /// Minimum seconds per timed window.
    #[arg(long, default_value_t = 0.2)]
    min_window: f64,
    /// Timed windows per variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Teacher-forced steps compared with each variant's oracle.
    #[arg(long, default_value_t = 4096)]
    check_tokens: usize,
    /// RNG seed of the sampler (xorshift32).
    #[arg(long, default_value_t = 42)]
    seed: u32,
    /// Sampling temperature (> 0).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    temperature: f32,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// List the registered variants and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            eprintln!(
                "{} (see --help)",
                text.lines().next().unwrap_or("error: bad arguments")
            );
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        return Err(format!(
            "--temperature must be a positive number, got {}",
            args.temperature
        ));
    }
    if !(args.min_window.is_finite() && args.min_window >= 0.0) || args.repeats == 0 {
        return Err("--min-window must be >= 0 and --repeats at least 1".into());
    }
    let specs = microgpt::registry();
    if args.list {
        for s in &specs {
            println!("{:24} {:12} {}", s.name, s.backend, s.precision);
        }
        return Ok(());
    }
    if let Some(f) = &args.variant
        && !specs.iter().any(|s| s.name.contains(f.as_str()))
    {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no variant matches `{f}` (variants: {})",
            names.join(", ")
        ));
    }

    let weights = match (&args.weights, args.shape) {
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
    };

    let options = BenchOptions {
        seed: args.seed,
        temperature: args.temperature,
        min_tokens: args.tokens.max(1),
        min_window_s: args.min_window,
        repeats: args.repeats,
        check_tokens: args.check_tokens,
        names: if args.names { 20 } else { 0 },
        ..BenchOptions::default()
    };
    let machine = Machine::detect();
    let shape = *weights.shape();
    let report_header = Report {
        machine: &machine,
        shape,
        weights: weights.source(),
        options: &options,
        outcomes: &[],
    };
    print!("{}", report_header.header());
    let _ = std::io::stdout().flush();

    let selected = specs
        .iter()
        .filter(|s| args.variant.as_deref().is_none_or(|f| s.name.contains(f)))
        .count();
    let mut done = 0;
    let live = std::io::stderr().is_terminal();
    let outcomes = run_all(
        &specs,
        &weights,
        &options,
        args.variant.as_deref(),
        &mut |event| {
            let (name, what) = match event {
                Event::Preparing(name) => {
                    done += 1;
                    (name, "preparing")
                }
                Event::Checking(name) => (name, "checking against its oracle"),
                Event::Timing(name) => (name, "timing"),
            };
            if live {
                eprint!("\r\x1b[2K[{done}/{selected}] {name}: {what}");
            } else if matches!(event, Event::Preparing(_)) {
                eprintln!("[{done}/{selected}] {name}");
            }
        },
    );
    if live {
        eprint!("\r\x1b[2K");
    }
    let report = Report {
        outcomes: &outcomes,
        ..report_header
    };
    println!();
    print!("{}", report.table());

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("JSON values serialise");
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let bad: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ran(row) if row.mismatched() => Some(row.info.name.as_str()),
            _ => None,
        })
        .collect();
    if !bad.is_empty() {
        eprintln!("error: tokens differ from the oracle (a bug): {}", bad.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
