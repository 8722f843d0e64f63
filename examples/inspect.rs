//! Prints what the generators make of the model, for reading.
//!
//! ```text
//! cargo run --example inspect -- ops                      # the op list every backend renders
//! cargo run --example inspect -- rust --target avx512     # the kernels! output, formatted
//! cargo run --example inspect -- rust --shape embd=32,layers=2,mlp=128 --precision q4.12
//! cargo run --example inspect -- clif --shape embd=32,layers=2,mlp=128  # the JIT's Cranelift IR
//! cargo run --example inspect -- asm --precision q4.12                   # its machine code
//! cargo run --example inspect -- cuda --shape embd=32,layers=2,mlp=128   # the generated CUDA C
//! cargo run --example inspect --features cuda -- ptx --arch compute_90   # NVRTC's PTX of it
//! ```

mod common;

use clap::{Parser, Subcommand};
use microgpt::model::Precision;
use microgpt::model::{Program, Shape};
use microgpt_codegen::{KernelId, Target};
use std::process::ExitCode;

fn parse_shape(s: &str) -> Result<Shape, String> {
    Shape::parse(s).map_err(|e| e.to_string())
}

#[derive(Parser, Debug)]
#[command(version, about = "Print the op list or the code a generator makes of it")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// The forward pass as the op list every backend renders.
    Ops {
        /// Model shape, e.g. `embd=32,layers=2,mlp=128` (default: the default shape).
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
    },
    /// The Cranelift IR the JIT renders for a shape (each instruction's `@nnnn` is its op).
    Clif {
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
        /// f32 or q4.12.
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// The machine code the JIT compiles for this CPU.
    Asm {
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
        /// f32 or q4.12.
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// The CUDA C generated for a shape (every CUDA variant's kernels, one source).
    Cuda {
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
    },
    /// The PTX NVRTC makes of the CUDA C (needs the `cuda` feature and NVRTC, not a GPU).
    Ptx {
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
        /// The virtual architecture, e.g. compute_90.
        #[arg(long, default_value = "compute_90")]
        arch: String,
    },
    /// The Rust that `kernels!` generates, formatted (what `cargo expand` shows).
    Rust {
        #[arg(long, value_parser = parse_shape)]
        shape: Option<Shape>,
        /// Only this target: scalar, sse, avx2, avx512, neon.
        #[arg(long)]
        target: Option<String>,
        /// Only this precision: f32, q4.12.
        #[arg(long)]
        precision: Option<String>,
        /// Only the kernels that start from the prefix table (or, with `--table false`, only
        /// those that do not).
        #[arg(long)]
        table: Option<bool>,
    },
}

fn main() -> ExitCode {
    let args = match common::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(args.what) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// A precision kernels are generated in, as the user wrote it.
fn kernel_precision(text: &str) -> Result<Precision, String> {
    Precision::parse(text).and_then(|p| {
        if Precision::KERNELS.contains(&p) {
            Ok(p)
        } else {
            Err(format!("no kernel is generated in {p} (expected f32 or q4.12)"))
        }
    })
}

fn jit(shape: Option<Shape>, precision: &str, disassemble: bool) -> Result<microgpt::jit::Jit, String> {
    let precision = kernel_precision(precision)?;
    let shape = shape.unwrap_or_default();
    let weights = if shape == Shape::DEFAULT {
        microgpt::weights::default_weights()
    } else {
        microgpt::weights::Weights::random(shape, 42, 0.08)
    };
    let options = microgpt::jit::JitOptions {
        disassemble,
        clif: !disassemble,
        ..microgpt::jit::JitOptions::new(precision)
    };
    microgpt::jit::compile(&weights, &Default::default(), &options).map_err(|e| e.to_string())
}

#[cfg(feature = "cuda")]
fn ptx(shape: Shape, arch: &str) -> Result<String, String> {
    microgpt::cuda::host::ptx(&shape, arch)
}

#[cfg(not(feature = "cuda"))]
fn ptx(_: Shape, _: &str) -> Result<String, String> {
    Err("built without the `cuda` feature (cargo run --features cuda --example inspect -- ptx)".into())
}

fn run(what: What) -> Result<String, String> {
    match what {
        What::Ops { shape } => Ok(Program::forward(shape.unwrap_or_default()).listing()),
        What::Cuda { shape } => Ok(microgpt::cuda::render(&shape.unwrap_or_default()).text),
        What::Ptx { shape, arch } => ptx(shape.unwrap_or_default(), &arch),
        What::Clif { shape, precision } => jit(shape, &precision, false)?
            .clif()
            .map(str::to_string)
            .ok_or_else(|| "the JIT kept no CLIF".to_string()),
        What::Asm { shape, precision } => jit(shape, &precision, true)?
            .asm()
            .map(str::to_string)
            .ok_or_else(|| "the compiler produced no listing".to_string()),
        What::Rust {
            shape,
            target,
            precision,
            table,
        } => {
            let target =
                match target.as_deref() {
                    None => None,
                    Some(name) => Some(Target::ALL.into_iter().find(|t| t.slug() == name).ok_or_else(
                        || {
                            let all: Vec<&str> = Target::ALL.iter().map(|t| t.slug()).collect();
                            format!("unknown target `{name}` (expected one of {})", all.join(", "))
                        },
                    )?),
                };
            let kind = precision.as_deref().map(kernel_precision).transpose()?;
            let shape = shape.unwrap_or_default();
            microgpt_codegen::valid::check_unrollable(&shape)?;
            let keep = |id: KernelId| {
                target.is_none_or(|t| id.target == t)
                    && kind.is_none_or(|k| id.precision == k)
                    && table.is_none_or(|b| id.table == b)
            };
            let tokens = microgpt_codegen::generate("microgpt", shape, keep);
            let file: syn::File =
                syn::parse2(tokens).map_err(|e| format!("generated code does not parse: {e}"))?;
            Ok(prettyplease::unparse(&file))
        }
    }
}
