//! Trains microGPT on a file of names and writes safetensors.
//!
//! ```text
//! cargo run --release --example train -- --data names.txt --out weights.safetensors
//! cargo run --release --example train -- --data names.txt --recipe microgpt
//! ```

mod common;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use microgpt::model::Shape;
use microgpt::runtime::{Settings, Variant, variant::reference_variant};
use microgpt::train::{Dataset, Recipe, TrainConfig, nll, train};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RecipeArg {
    /// Karpathy's microgpt.py schedule: one name per step, 1,000 steps.
    Microgpt,
    /// Minibatches of 128 names, 20,000 steps.
    Default,
}

/// Train microGPT (Adam, linear learning-rate decay, N(0, 0.08) init) and write safetensors.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A text file with one name per line (lowercase a-z).
    #[arg(long)]
    data: PathBuf,
    /// Where to write the weights.
    #[arg(long, default_value = "trained.safetensors")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "default")]
    recipe: RecipeArg,
    /// Override the recipe's step count.
    #[arg(long)]
    steps: Option<usize>,
    /// Override the recipe's names per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Override the recipe's peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Worker threads (default: every core). Results depend on the seed only, not on this.
    #[arg(long)]
    threads: Option<usize>,
    /// Model shape, e.g. `embd=32,layers=2,mlp=128` (fields left out keep the defaults).
    #[arg(long, value_parser = |s: &str| Shape::parse(s).map_err(|e| e.to_string()))]
    shape: Option<Shape>,
}

fn main() -> ExitCode {
    let args = match common::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| e.to_string())?;
    }
    let shape = args.shape.unwrap_or(Shape::DEFAULT);
    let label = args.data.display().to_string();
    let text = std::fs::read_to_string(&args.data).map_err(|e| format!("{label}: cannot read: {e}"))?;
    let data = Dataset::parse(&text, &shape, &label)?;

    let recipe = match args.recipe {
        RecipeArg::Microgpt => Recipe::Microgpt,
        RecipeArg::Default => Recipe::Default,
    };
    let mut cfg = TrainConfig::recipe(recipe);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.batch = args.batch.unwrap_or(cfg.batch);
    cfg.lr = args.lr.unwrap_or(cfg.lr);
    cfg.seed = args.seed;
    if cfg.steps == 0 || cfg.batch == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err("--steps and --batch must be at least 1 and --lr positive".into());
    }
    println!(
        "training shape {shape} ({} parameters) on {} names from {label}: {:?} recipe, {} steps of {} names, lr {} (linear decay), seed {}, {} threads",
        shape.param_count(),
        data.len(),
        recipe,
        cfg.steps,
        cfg.batch,
        cfg.lr,
        cfg.seed,
        rayon::current_num_threads(),
    );

    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut running = None;
    let weights = train(&data, &cfg, &mut |r| {
        // Exponential moving average of the per-token loss over ~100 steps.
        let avg = running.map_or(r.loss, |a: f64| 0.99 * a + 0.01 * r.loss);
        running = Some(avg);
        if r.step % 10 == 0 || r.step == cfg.steps {
            bar.set_position(r.step as u64);
            bar.set_message(format!("loss {avg:.4} lr {:.5}", r.lr));
        }
    });
    bar.finish();
    let train_s = start.elapsed().as_secs_f64();

    let score = nll(&weights, &data);
    let command = format!(
        "cargo run --release --example train -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let meta = [
        ("recipe", format!("{recipe:?}")),
        ("steps", cfg.steps.to_string()),
        ("batch", cfg.batch.to_string()),
        ("lr", cfg.lr.to_string()),
        ("seed", cfg.seed.to_string()),
        ("nll", format!("{score:.4}")),
        ("command", command),
    ];
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bytes = weights.to_safetensors(&meta);
    std::fs::write(&args.out, bytes).map_err(|e| format!("{}: cannot write: {e}", args.out.display()))?;

    println!("trained in {train_s:.1} s; NLL on {label}: {score:.4} nats/token");
    println!("wrote {}", args.out.display());
    let mut v = reference_variant::<f32>(&weights, &Settings::default());
    for (i, name) in v
        .names(20, microgpt::runtime::sampler::DEFAULT_SEED)
        .iter()
        .enumerate()
    {
        println!("sample {:2}: {name}", i + 1);
    }
    Ok(())
}
