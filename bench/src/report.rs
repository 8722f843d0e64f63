//! The bench's output: a table a person reads at a glance, and stable JSON for tools.

use crate::baseline::Baseline;
use crate::harness::{BenchOptions, Outcome, Row};
use crate::latency::{self, Latency, LatencySource};
use crate::machine::Machine;
use crate::roof::Roof;
use crate::stats::{CONFIDENCE, Change, RESAMPLES};
use microgpt_model::Shape;
use microgpt_runtime::Modelled;
use microgpt_talos::CLAIMED_TOK_PER_S as TALOS_CLAIMED_TOK_PER_S;
use serde_json::{Value, json};

/// The widest the default table, and every line of text around it, may be.
pub const TABLE_WIDTH: usize = 120;

/// How far the one-core roof may move between the start and the end of a run before the report
/// warns that the machine was disturbed.
pub const ROOF_DRIFT: f64 = 0.10;

/// A column of the table.
struct Column {
    header: &'static str,
    /// Right-aligned.
    numeric: bool,
    /// Only with `--wide`.
    wide_only: bool,
    /// Only with `--baseline`.
    baseline: bool,
}

const CI_HEADER: &str = "95% CI";

const fn col(header: &'static str, numeric: bool, wide_only: bool) -> Column {
    Column {
        header,
        numeric,
        wide_only,
        baseline: false,
    }
}

/// Every column, in order (docs/bench.md#the-table).
const COLUMNS: [Column; 24] = [
    col("variant", false, false),
    col("backend", false, true),
    col("ISA", false, true),
    col("prec", false, false),
    col("streams", true, false),
    col("tok/s", true, false),
    col(CI_HEADER, true, false),
    col("tok/s/stream", true, true),
    col("ns/tok", true, false),
    col("p50", true, true),
    col("p99", true, false),
    col("p99.9", true, true),
    col("max", true, true),
    col("% roof", true, false),
    col("tok/J", true, true),
    col("x FPGA", true, false),
    col("x ref", true, true),
    col("max|dlogit|", true, true),
    col("tokens agree", true, true),
    col("free run", false, true),
    col("oracle", false, true),
    col("check", false, false),
    Column {
        baseline: true,
        ..col("vs baseline", false, false)
    },
    Column {
        baseline: true,
        ..col("change CI", false, true)
    },
];

/// Everything a report shows.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub shape: Shape,
    pub weights: &'a str,
    pub options: &'a BenchOptions,
    pub outcomes: &'a [Outcome],
    /// This machine's measured FMA throughput, when measured: CPU rows show their share.
    pub roof: Option<&'a Roof>,
    /// The same measured again after the rows: a change warns of a disturbed machine.
    pub roof_after: Option<&'a Roof>,
    /// A saved run to compare every row with.
    pub baseline: Option<&'a Baseline>,
    /// Every column, not only those a reader needs first.
    pub wide: bool,
}

impl Report<'_> {
    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.outcomes.iter().filter_map(|o| match o {
            Outcome::Ran(row) => Some(row.as_ref()),
            Outcome::Skipped { .. } => None,
        })
    }

    /// The fp32 reference's rate, if it ran: the "× ref" column divides by it.
    fn reference_rate(&self) -> Option<f64> {
        self.rows()
            .find(|r| r.info.name == "reference")
            .map(|r| r.timing.tok_per_s)
    }

    /// A CPU row's share of the roof.
    fn roof_share(&self, row: &Row) -> Option<f64> {
        let roof = self.roof.filter(|_| !row.info.on_gpu)?;
        Some(roof.share(row.timing.tok_per_s, self.shape.weight_macs(), row.info.threads))
    }

    /// How power was obtained, for the header.
    fn power_line(&self) -> String {
        match &self.options.rapl {
            Some(_) => "measured from the CPU package energy counters (RAPL) over the timed windows".into(),
            None => format!(
                "estimated at {} W per core used (no readable RAPL energy counters; --watts-per-core sets it)",
                self.options.watts_per_core
            ),
        }
    }

    /// The header: machine, shape, weights, how tokens were timed; lines wrapped to
    /// [`TABLE_WIDTH`].
    pub fn header(&self) -> String {
        let m = self.machine;
        let o = self.options;
        let mut lines = vec![
            "microGPT bench".to_string(),
            format!("cpu:      {} ({}, {} logical cores)", m.cpu, m.arch, m.cores),
            format!(
                "features: {}",
                if m.features.is_empty() {
                    "none detected".into()
                } else {
                    m.features.join(" ")
                }
            ),
            format!(
                "shape:    {} ({} parameters, {} weight MACs/token)",
                self.shape,
                self.shape.param_count(),
                self.shape.weight_macs()
            ),
            format!("weights:  {}", self.weights),
            format!(
                "timing:   median of {} windows, each >= {} tokens and >= {:.2} s, after {:.2} s warm-up, \
                 with the median's {:.0}% bootstrap interval; single thread unless streams > 1",
                o.repeats,
                o.min_tokens,
                o.min_window_s,
                o.warmup_s,
                CONFIDENCE * 100.0
            ),
            if o.latency_samples > 0 {
                format!(
                    "latency:  single-stream rows: up to {} single steps timed one by one (for at most \
                     {:.2} s), into an HdrHistogram (3 significant digits)",
                    o.latency_samples,
                    o.latency_budget_s()
                )
            } else {
                "latency:  not measured (--latency-samples 0)".into()
            },
            format!(
                "sampling: seed {}, temperature {}; check: {} teacher-forced steps vs each row's oracle",
                o.seed, o.temperature, o.check_tokens
            ),
        ];
        if let Some(r) = self.roof {
            lines.push(format!(
                "roof:     {:.1} G f32 FMA/s per core ({}, measured; {:.1} G on all {} cores) = {} tok/s \
                 per core at {} MACs/token; % roof = tok/s x MACs / (FMA/s per core x cores used)",
                r.per_core / 1e9,
                r.isa,
                r.all_cores / 1e9,
                r.cores,
                human_rate(r.tok_per_s_per_core(self.shape.weight_macs())),
                self.shape.weight_macs()
            ));
        }
        lines.push(format!("power:    {}", self.power_line()));
        if let Some(b) = self.baseline {
            lines.push(format!(
                "baseline: {} ({} rows; {}, shape {}, {})",
                b.path,
                b.len(),
                b.cpu,
                b.shape,
                b.weights
            ));
        }
        lines.iter().map(|l| wrap(l, TABLE_WIDTH, 10)).collect()
    }

    /// The table (the columns a reader needs first, within [`TABLE_WIDTH`]; every column with
    /// `wide`), then skipped rows, notes, warnings and names.
    pub fn table(&self) -> String {
        let columns: Vec<&Column> = COLUMNS
            .iter()
            .filter(|c| self.wide || !c.wide_only)
            .filter(|c| self.baseline.is_some() || !c.baseline)
            .collect();
        let mut lines: Vec<Vec<String>> = Vec::new();
        for row in self.rows() {
            lines.push(columns.iter().map(|c| self.cell(row, c.header)).collect());
            if let Some(m) = &row.info.modelled {
                lines.push(
                    columns
                        .iter()
                        .map(|c| self.modelled_cell(row, m, c.header))
                        .collect(),
                );
            }
        }
        let mut widths: Vec<usize> = columns.iter().map(|c| c.header.chars().count()).collect();
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        // Numbers right-aligned, text left-aligned.
        let fmt_line = |cells: Vec<String>| -> String {
            let mut s = String::new();
            for ((c, w), col) in cells.iter().zip(&widths).zip(&columns) {
                let pad = " ".repeat(w - c.chars().count());
                if col.numeric {
                    s.push_str(&pad);
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&pad);
                }
                s.push_str("  ");
            }
            s.trim_end().to_string()
        };
        let mut out = fmt_line(columns.iter().map(|c| c.header.to_string()).collect());
        out.push('\n');
        out.push_str(&fmt_line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        out.push('\n');
        for l in lines {
            out.push_str(&fmt_line(l));
            out.push('\n');
        }
        let mut text = Vec::new();
        // Skipped rows, grouped by reason.
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for o in self.outcomes {
            if let Outcome::Skipped { name, reason, .. } = o {
                match reasons.iter_mut().find(|(r, _)| *r == reason.as_str()) {
                    Some((_, names)) => names.push(name),
                    None => reasons.push((reason, vec![name])),
                }
            }
        }
        for (reason, names) in reasons {
            text.push(format!("skipped {}: {reason}", names.join(", ")));
        }
        // Notes, each once with the rows it is about.
        let mut notes: Vec<(String, Vec<&str>)> = Vec::new();
        let mut note = |name, text: String| match notes.iter_mut().find(|(t, _)| *t == text) {
            Some((_, names)) => names.push(name),
            None => notes.push((text, vec![name])),
        };
        for row in self.rows() {
            if let Some(ms) = row.info.compile_ms {
                note(&row.info.name, format!("compiled in {ms:.1} ms"));
            }
            for n in &row.info.notes {
                note(&row.info.name, n.clone());
            }
            if let Some(m) = &row.info.modelled {
                note(&m.name, m.note.clone());
            }
        }
        text.extend(
            notes
                .into_iter()
                .map(|(t, names)| format!("{}: {t}", names.join(", "))),
        );
        text.push(self.legend());
        text.extend(self.warnings().into_iter().map(|w| format!("warning: {w}")));
        for t in text {
            out.push_str(&wrap(&t, TABLE_WIDTH, 2));
        }
        for row in self.rows() {
            if let Some(names) = &row.names {
                out.push_str(&format!("\nnames from {}:\n", row.info.name));
                for (i, n) in names.iter().enumerate() {
                    out.push_str(&format!("sample {:2}: {n}\n", i + 1));
                }
            }
        }
        out
    }

    /// What the columns' marks and units mean, under the table.
    fn legend(&self) -> String {
        let mut s = format!(
            "tok/s: median window; {:.0}% CI: bootstrap interval of the median over the windows \
             (! = a window stands out, see the warnings). p99: per-token latency of single steps \
             (single-stream rows){}. tok/J: tokens per joule{}. x FPGA: relative to TALOS-V2's \
             claimed {} tok/s. check: teacher-forced tokens against the row's oracle (fp32 rows \
             against the scalar fp32 reference, Q4.12 rows against the scalar Q4.12 reference).",
            CONFIDENCE * 100.0,
            match self.timer_ns() {
                Some(ns) => format!(", each with one timer reading ({ns:.0} ns here)"),
                None => String::new(),
            },
            if self.options.rapl.is_some() {
                ", measured"
            } else {
                "; * = estimated from the assumed watts per core, not measured"
            },
            TALOS_CLAIMED_TOK_PER_S
        );
        if let Some(b) = self.baseline {
            s.push_str(&format!(
                " vs baseline: median change from {} ({}), faster or slower when its {:.0}% \
                 interval excludes 0.",
                b.path,
                b.cpu,
                CONFIDENCE * 100.0
            ));
        }
        if !self.wide {
            s.push_str(" --wide prints every column.");
        }
        s
    }

    /// A timed row's cell in the column headed `header`.
    fn cell(&self, row: &Row, header: &str) -> String {
        let t = &row.timing;
        let a = row.agreement.as_ref();
        let latency = |f: fn(&Latency) -> f64| t.latency.as_ref().map_or("-".into(), |l| human_ns(f(l)));
        match header {
            "variant" => row.info.name.clone(),
            "backend" => row.info.backend.clone(),
            "ISA" => row.info.isa.clone(),
            "prec" => row.info.precision.to_string(),
            "streams" => row.info.streams.to_string(),
            "tok/s" => human_rate(t.tok_per_s),
            CI_HEADER => format!(
                "{}{}",
                rate_range(t.interval, t.tok_per_s),
                if t.outliers.is_empty() { "" } else { " !" }
            ),
            "tok/s/stream" => human_rate(t.tok_per_s / row.info.streams.max(1) as f64),
            "ns/tok" => format!("{:.1}", t.ns_per_token),
            "p50" => latency(|l| l.p50),
            "p99" => latency(|l| l.p99),
            "p99.9" => latency(|l| l.p999),
            "max" => latency(|l| l.max),
            "% roof" => self
                .roof_share(row)
                .map_or("-".into(), |f| format!("{:.1}", f * 100.0)),
            "tok/J" => t.power.tok_per_joule(t.tok_per_s).map_or("-".into(), |j| {
                format!(
                    "{}{}",
                    human_rate(j),
                    if t.power.is_measured() { "" } else { "*" }
                )
            }),
            "x FPGA" => times(t.tok_per_s / TALOS_CLAIMED_TOK_PER_S),
            "x ref" => self
                .reference_rate()
                .map_or("-".into(), |r| times(t.tok_per_s / r)),
            "max|dlogit|" => a.map_or("-".into(), |a| format!("{:.1e}", a.max_abs_logit_diff)),
            "tokens agree" => a.map_or("-".into(), |a| {
                format!(
                    "{}{}/{}{}",
                    if row.mismatched() { "MISMATCH " } else { "" },
                    a.agreed + a.excused,
                    a.tokens,
                    if a.excused > 0 {
                        format!(" ({} at boundary)", a.excused)
                    } else {
                        String::new()
                    }
                )
            }),
            "free run" => a.map_or("-".into(), |a| {
                if a.free_run_identical == a.free_run_tokens {
                    "identical".to_string()
                } else {
                    format!("{} tok", a.free_run_identical)
                }
            }),
            "oracle" => a.map_or(row.info.oracle.name().into(), |a| a.oracle.clone()),
            "check" => match a {
                None => "-".into(),
                Some(_) if row.mismatched() => "MISMATCH".into(),
                Some(_) => "ok".into(),
            },
            "vs baseline" => self.vs_baseline(row).map_or("-".into(), |c| {
                format!("{} {}", percent(c.change), c.verdict.as_str())
            }),
            "change CI" => self.vs_baseline(row).map_or("-".into(), |c| {
                format!("{} to {}", percent(c.interval.0), percent(c.interval.1))
            }),
            _ => unreachable!("a column without a cell: {header}"),
        }
    }

    /// A modelled row's cell (the FPGA beside its emulator) in the column headed `header`.
    fn modelled_cell(&self, row: &Row, m: &Modelled, header: &str) -> String {
        let latency = latency::exact(&m.step_latency_ns);
        let latency = |f: fn(&Latency) -> f64| latency.as_ref().map_or("-".into(), |l| human_ns(f(l)));
        match header {
            "variant" => m.name.clone(),
            "backend" => m.backend.clone(),
            "prec" => row.info.precision.to_string(),
            "streams" => "1".into(),
            "tok/s" | "tok/s/stream" => human_rate(m.tok_per_s),
            "ns/tok" => format!("{:.1}", 1e9 / m.tok_per_s),
            "p50" => latency(|l| l.p50),
            "p99" => latency(|l| l.p99),
            "p99.9" => latency(|l| l.p999),
            "max" => latency(|l| l.max),
            "x FPGA" => times(m.tok_per_s / TALOS_CLAIMED_TOK_PER_S),
            "x ref" => self
                .reference_rate()
                .map_or("-".into(), |r| times(m.tok_per_s / r)),
            "oracle" | "check" => "modelled".into(),
            _ => "-".into(),
        }
    }

    /// The cost of one timer reading, as the first timed latency measured it.
    fn timer_ns(&self) -> Option<f64> {
        self.rows().find_map(|r| match r.timing.latency.as_ref()?.source {
            LatencySource::Timed { timer_ns } => Some(timer_ns),
            LatencySource::Modelled => None,
        })
    }

    /// This row against the same row of the baseline run.
    fn vs_baseline(&self, row: &Row) -> Option<Change> {
        self.baseline?.compare(&row.info.name, &row.timing.windows)
    }

    /// Signs that the machine was disturbed while the rows ran: the roof moved, windows stood
    /// out.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let (Some(before), Some(after)) = (self.roof, self.roof_after) {
            let change = after.per_core / before.per_core - 1.0;
            if change.abs() > ROOF_DRIFT {
                w.push(format!(
                    "the one-core roof moved {} between the start and the end of the run ({:.1} G \
                     to {:.1} G FMA/s): the machine was busy or changed its clock; compare figures \
                     from this run with care",
                    percent(change),
                    before.per_core / 1e9,
                    after.per_core / 1e9
                ));
            }
        }
        for row in self.rows() {
            let t = &row.timing;
            for &i in &t.outliers {
                w.push(format!(
                    "{}: window {} of {} ({} tok/s) stands out from the median {}",
                    row.info.name,
                    i + 1,
                    t.windows.len(),
                    human_rate(t.windows[i]),
                    human_rate(t.tok_per_s)
                ));
            }
        }
        w
    }

    /// The JSON document (its schema: docs/bench.md#json).
    pub fn json(&self) -> Value {
        let reference = self.reference_rate();
        let results: Vec<Value> = self
            .rows()
            .map(|row| {
                let mut v = json!({
                    "variant": row.info.name,
                    "backend": row.info.backend,
                    "isa": row.info.isa,
                    "precision": row.info.precision.to_string(),
                    "streams": row.info.streams,
                    "threads": row.info.threads,
                    "tok_per_s": row.timing.tok_per_s,
                    "tok_per_s_per_stream": row.timing.tok_per_s / row.info.streams.max(1) as f64,
                    "roof_share": self.roof_share(row),
                    "watts": row.timing.power.watts(),
                    "power": row.timing.power.label(),
                    "power_measured": row.timing.power.is_measured(),
                    "tok_per_joule": row.timing.power.tok_per_joule(row.timing.tok_per_s),
                    "ns_per_token": row.timing.ns_per_token,
                    "x_fpga": row.timing.tok_per_s / TALOS_CLAIMED_TOK_PER_S,
                    "x_reference": reference.map(|r| row.timing.tok_per_s / r),
                    "tok_per_s_ci": [row.timing.interval.0, row.timing.interval.1],
                    "window_tokens": row.timing.window_tokens,
                    "windows_tok_per_s": row.timing.windows,
                    "outlier_windows": row.timing.outliers,
                    "latency_ns": row.timing.latency.as_ref().map(latency_json),
                    "oracle": row.info.oracle.name(),
                    "max_abs_logit_diff": row.agreement.as_ref().map(|a| a.max_abs_logit_diff),
                    "token_agreement": row.agreement.as_ref().map(|a| a.token_agreement()),
                    "exact_tokens_expected": row.info.exact_tokens,
                    "mismatch": row.mismatched(),
                    "tokens_checked": row.agreement.as_ref().map(|a| a.tokens),
                    "tokens_excused_at_boundary": row.agreement.as_ref().map(|a| a.excused),
                    "free_run_identical_tokens": row.agreement.as_ref().map(|a| a.free_run_identical),
                    "compile_ms": row.info.compile_ms,
                    "notes": row.info.notes,
                });
                if let Some(names) = &row.names {
                    v["names"] = json!(names);
                }
                if self.baseline.is_some() {
                    v["vs_baseline"] = json!(self.vs_baseline(row).map(|c| json!({
                        "change": c.change,
                        "ci": [c.interval.0, c.interval.1],
                        "verdict": c.verdict.as_str(),
                    })));
                }
                v
            })
            .collect();
        let modelled: Vec<Value> = self
            .rows()
            .filter_map(|row| row.info.modelled.as_ref().map(|m| (row, m)))
            .map(|(row, m)| {
                json!({
                    "variant": m.name,
                    "backend": m.backend,
                    "from": row.info.name,
                    "tok_per_s": m.tok_per_s,
                    "ns_per_token": 1e9 / m.tok_per_s,
                    "latency_ns": latency::exact(&m.step_latency_ns).as_ref().map(latency_json),
                    "note": m.note,
                })
            })
            .collect();
        let skipped: Vec<Value> = self
            .outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Skipped {
                    name,
                    backend,
                    reason,
                } => Some(json!({"variant": name, "backend": backend, "reason": reason})),
                Outcome::Ran(_) => None,
            })
            .collect();
        let shape: serde_json::Map<String, Value> = self
            .shape
            .fields()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let roof = |r: &Roof| {
            json!({
                "isa": r.isa,
                "lanes": r.lanes,
                "fma_per_s_per_core": r.per_core,
                "fma_per_s_all_cores": r.all_cores,
                "cores": r.cores,
            })
        };
        let mut doc = json!({
            "machine": {
                "cpu": self.machine.cpu,
                "arch": self.machine.arch,
                "cores": self.machine.cores,
                "features": self.machine.features,
                "roof": self.roof.map(roof),
                "roof_after": self.roof_after.map(roof),
            },
            "weight_macs_per_token": self.shape.weight_macs(),
            "shape": shape,
            "weights": self.weights,
            "seed": self.options.seed,
            "temperature": self.options.temperature,
            "confidence": CONFIDENCE,
            "ci_method": format!("percentile bootstrap of the median over the windows, {RESAMPLES} resamples"),
            "results": results,
            "modelled": modelled,
            "skipped": skipped,
            "warnings": self.warnings(),
        });
        if let Some(b) = self.baseline {
            doc["baseline"] =
                json!({"path": b.path, "cpu": b.cpu, "shape": b.shape.to_string(), "weights": b.weights});
        }
        doc
    }
}

/// A latency summary in the JSON.
fn latency_json(l: &Latency) -> Value {
    json!({
        "p50": l.p50,
        "p99": l.p99,
        "p999": l.p999,
        "max": l.max,
        "mean": l.mean,
        "samples": l.samples,
        "method": l.source.label(),
        "timer_ns": match l.source {
            LatencySource::Timed { timer_ns } => Some(timer_ns),
            LatencySource::Modelled => None,
        },
    })
}

/// Breaks `text` into lines of at most `width` characters at spaces (a longer word keeps its own
/// line), the lines after the first indented by `indent`; each line ends in a newline.
pub fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        // Split at single spaces, so that runs of spaces (the header's alignment) are kept
        // within a line; at a break they are dropped.
        for (i, word) in paragraph.split(' ').enumerate() {
            let filled = !line.trim().is_empty();
            if filled && !word.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(indent);
            } else if i > 0 && (filled || !word.is_empty() || line.is_empty()) {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The unit a rate is shown in: its divisor, its suffix and its decimals (1.23 M, 53.0 K).
fn rate_unit(v: f64) -> (f64, &'static str, usize) {
    match v {
        v if v >= 1e9 => (1e9, " G", 2),
        v if v >= 1e6 => (1e6, " M", 2),
        v if v >= 1e3 => (1e3, " K", 1),
        _ => (1.0, "", 0),
    }
}

/// An interval of rates in the unit of `like`: (14_912_000, 15_620_000) → "14.91-15.62".
fn rate_range((lo, hi): (f64, f64), like: f64) -> String {
    let (scale, _, decimals) = rate_unit(like);
    format!("{:.*}-{:.*}", decimals, lo / scale, decimals, hi / scale)
}

/// Nanoseconds with a unit: 152.0 → "152 ns", 19_230.0 → "19.2 µs", 2.5e6 → "2.50 ms".
pub fn human_ns(ns: f64) -> String {
    match ns {
        v if v >= 1e9 => format!("{:.2} s", v / 1e9),
        v if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        v if v >= 1e4 => format!("{:.1} µs", v / 1e3),
        v => format!("{v:.0} ns"),
    }
}

/// A ratio, with fewer decimals as it grows: 0.042 → "0.042", 0.72 → "0.72", 17.04 → "17.0",
/// 396.2 → "396".
fn times(x: f64) -> String {
    match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x if x >= 0.1 => format!("{x:.2}"),
        x => format!("{x:.3}"),
    }
}

/// A signed fraction as a percentage: 0.031 → "+3.1%", −0.2 → "-20%".
fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p.abs() < 10.0 {
        format!("{p:+.1}%")
    } else {
        format!("{p:+.0}%")
    }
}

/// 1234567.0 → "1.23 M".
pub fn human_rate(v: f64) -> String {
    let (scale, unit, decimals) = rate_unit(v);
    format!("{:.*}{unit}", decimals, v / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wraps_at_spaces_keeping_alignment() {
        assert_eq!(wrap("cpu:      x y", 40, 10), "cpu:      x y\n");
        assert_eq!(wrap("aaa bbb ccc ddd", 9, 2), "aaa bbb\n  ccc ddd\n");
        // A word longer than the width keeps its own line; no empty lines.
        assert_eq!(wrap("a bbbbbbbbbbbb c", 5, 1), "a\n bbbbbbbbbbbb\n c\n");
        assert_eq!(wrap("one\ntwo", 80, 0), "one\ntwo\n");
        for line in wrap(&"word ".repeat(100), TABLE_WIDTH, 2).lines() {
            assert!(line.len() <= TABLE_WIDTH);
        }
    }

    #[test]
    fn units_and_signs() {
        assert_eq!(human_ns(152.4), "152 ns");
        assert_eq!(human_ns(19_230.0), "19.2 µs");
        assert_eq!(human_ns(2.5e6), "2.50 ms");
        assert_eq!(percent(0.031), "+3.1%");
        assert_eq!(percent(-0.2), "-20%");
        assert_eq!(rate_range((14_912_000.0, 15_620_000.0), 15e6), "14.91-15.62");
        assert_eq!(rate_range((990_000.0, 1_010_000.0), 999_000.0), "990.0-1010.0");
        assert_eq!(times(396.2), "396");
        assert_eq!(times(0.72), "0.72");
        assert_eq!(CI_HEADER, format!("{:.0}% CI", CONFIDENCE * 100.0));
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(human_rate(1_234_567.0), "1.23 M");
        assert_eq!(human_rate(53_000.0), "53.0 K");
        assert_eq!(human_rate(2.5e9), "2.50 G");
        assert_eq!(human_rate(12.0), "12");
    }
}
