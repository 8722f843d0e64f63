//! The shape sweep: how cost grows with the model. The JIT and the reference run every shape of
//! a grid (embd 16 to 64, layers 1 to 4); the proc-macro kernels run the shapes they were
//! generated for. Weights are a seeded random init (the shapes have no trained weights); every
//! row is still checked against its oracle.

use crate::harness::{BenchOptions, Outcome, run_all};
use microgpt_model::Shape;
use microgpt_runtime::{Precision, VariantSpec};
use microgpt_weights::Weights;

/// One measured (shape, series) point: the fastest variant of the series at that shape.
#[derive(Clone, Debug)]
pub struct SweepRow {
    pub shape: Shape,
    pub macs: usize,
    pub series: String,
    pub variant: String,
    pub tok_per_s: f64,
    /// Whether it agreed with its oracle.
    pub agreed: bool,
}

/// The grid: embd 16, 32, 48, 64 × layers 1 to 4 (4 heads, MLP 4 × embd, vocab and block as
/// the default shape), then any shape a registry entry was generated for.
pub fn shapes(specs: &[VariantSpec]) -> Vec<Shape> {
    let mut out = Vec::new();
    for embd in [16, 32, 48, 64] {
        for layers in 1..=4 {
            out.push(Shape {
                embd,
                layers,
                mlp: 4 * embd,
                ..Shape::DEFAULT
            });
        }
    }
    for s in specs.iter().filter_map(|s| s.shape) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Which series a registry entry belongs to in the sweep, if any: the references and the JIT
/// everywhere, and the proc-macro kernels that are the fastest of their kind (prefix-table single
/// streams, lane batches, and both on every core).
fn series(spec: &VariantSpec) -> Option<String> {
    let p = match spec.precision {
        Precision::F32 => "fp32",
        Precision::Q412 => "Q4.12",
        _ => return None,
    };
    match spec.backend.as_str() {
        "scalar" if spec.name == "reference" => Some("reference (scalar fp32)".into()),
        "cranelift" => Some(spec.name.clone()),
        "proc-macro" if !spec.name.starts_with("scalar") && !spec.name.starts_with("sse") => {
            let fast_kind = spec.name.contains("-x") || spec.name.contains("-table");
            let cores = if spec.threads > 1 { "all cores" } else { "1 core" };
            fast_kind.then(|| format!("proc-macro {p}, {cores}"))
        }
        _ => None,
    }
}

/// Runs the sweep; `progress(i, n, shape)` before each shape.
pub fn run(
    specs: &[VariantSpec],
    o: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize, &Shape),
) -> Vec<SweepRow> {
    let o = BenchOptions {
        min_tokens: 1000,
        min_window_s: 0.05,
        repeats: 3,
        warmup_s: 0.02,
        check_tokens: 256,
        names: 0,
        latency_samples: 0,
        ..o.clone()
    };
    let grid = shapes(specs);
    let mut rows: Vec<SweepRow> = Vec::new();
    for (i, shape) in grid.iter().enumerate() {
        progress(i, grid.len(), shape);
        let keep = |s: &VariantSpec| s.shape.is_none_or(|sh| sh == *shape) && series(s).is_some();
        let weights = Weights::random(*shape, u64::from(o.seed), 0.08);
        for outcome in run_all(specs, &weights, &o, &keep, &mut |_| {}) {
            let Outcome::Ran(row) = outcome else { continue };
            let series = specs
                .iter()
                .find(|s| s.name == row.info.name)
                .and_then(series)
                .expect("every row comes from a kept spec");
            let point = SweepRow {
                shape: *shape,
                macs: shape.weight_macs(),
                series,
                variant: row.info.name.clone(),
                tok_per_s: row.timing.tok_per_s,
                agreed: !row.mismatched(),
            };
            match rows
                .iter_mut()
                .find(|r| r.shape == point.shape && r.series == point.series)
            {
                Some(r) if r.tok_per_s < point.tok_per_s => *r = point,
                Some(_) => {}
                None => rows.push(point),
            }
        }
    }
    rows
}

/// The sweep as a table: one line per shape and series.
pub fn table(rows: &[SweepRow]) -> String {
    let width = rows
        .iter()
        .map(|r| r.shape.to_string().len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!(
        "{:<width$} {:>7}  {:<28} {:<22} {:>9} {:>8}\n",
        "shape", "MACs", "series", "fastest variant", "tok/s", "GMAC/s"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<width$} {:>7}  {:<28} {:<22} {:>9} {:>8.2}{}\n",
            r.shape.to_string(),
            r.macs,
            r.series,
            r.variant,
            crate::report::human_rate(r.tok_per_s),
            r.tok_per_s * r.macs as f64 / 1e9,
            if r.agreed { "" } else { "  MISMATCH" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_spans_embd_16_to_64_and_layers_1_to_4() {
        let grid = shapes(&crate::registry());
        for embd in [16, 64] {
            for layers in [1, 4] {
                assert!(grid.iter().any(|s| s.embd == embd && s.layers == layers));
            }
        }
        assert!(grid.contains(&Shape::DEFAULT));
        let mut sorted = grid.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), grid.len());
    }

    #[test]
    fn series_pick_the_fast_kinds() {
        let reg = crate::registry();
        let named = |n: &str| reg.iter().find(|s| s.name == n).and_then(series);
        assert_eq!(named("reference").as_deref(), Some("reference (scalar fp32)"));
        assert_eq!(named("cranelift-f32").as_deref(), Some("cranelift-f32"));
        assert_eq!(named("scalar-f32"), None);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                named("avx512-f32-table").as_deref(),
                Some("proc-macro fp32, 1 core")
            );
            assert_eq!(named("avx512-f32").as_deref(), None);
            let cores = microgpt_runtime::threads::cores();
            assert_eq!(
                named(&format!("avx512-q4.12-x16-{cores}t")).as_deref(),
                Some("proc-macro Q4.12, all cores")
            );
        }
    }
}
