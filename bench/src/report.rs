//! The bench's output: a table a person reads at a glance, and stable JSON for tools.

use crate::harness::{BenchOptions, Outcome, Row};
use crate::machine::Machine;
use crate::roof::Roof;
use microgpt_model::Shape;
use microgpt_talos::CLAIMED_TOK_PER_S as TALOS_CLAIMED_TOK_PER_S;
use serde_json::{Value, json};

/// Everything a report shows.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub shape: Shape,
    pub weights: &'a str,
    pub options: &'a BenchOptions,
    pub outcomes: &'a [Outcome],
    /// This machine's measured FMA throughput, when measured: CPU rows show their share.
    pub roof: Option<&'a Roof>,
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

    /// The header: machine, shape, weights, how tokens were timed.
    pub fn header(&self) -> String {
        let m = self.machine;
        let o = self.options;
        format!(
            "microGPT bench\n\
             cpu:      {} ({}, {} logical cores)\n\
             features: {}\n\
             shape:    {} ({} parameters, {} weight MACs/token)\n\
             weights:  {}\n\
             timing:   median of {} windows, each >= {} tokens and >= {:.2} s, after {:.2} s warm-up; \
             single thread unless streams > 1\n\
             sampling: seed {}, temperature {}; check: {} teacher-forced steps vs each row's oracle\n\
             {}\
             power:    {}\n",
            m.cpu,
            m.arch,
            m.cores,
            if m.features.is_empty() {
                "none detected".into()
            } else {
                m.features.join(" ")
            },
            self.shape,
            self.shape.param_count(),
            self.shape.weight_macs(),
            self.weights,
            o.repeats,
            o.min_tokens,
            o.min_window_s,
            o.warmup_s,
            o.seed,
            o.temperature,
            o.check_tokens,
            match self.roof {
                Some(r) => format!(
                    "roof:     {:.1} G f32 FMA/s per core ({}, measured; {:.1} G on all {} cores) = {} tok/s \
                     per core at {} MACs/token; % roof = tok/s x MACs / (FMA/s per core x cores used)\n",
                    r.per_core / 1e9,
                    r.isa,
                    r.all_cores / 1e9,
                    r.cores,
                    human_rate(r.tok_per_s_per_core(self.shape.weight_macs())),
                    self.shape.weight_macs()
                ),
                None => String::new(),
            },
            self.power_line(),
        )
    }

    /// The table, then skipped rows, notes and names.
    pub fn table(&self) -> String {
        let reference = self.reference_rate();
        let headers = [
            "variant",
            "backend",
            "ISA",
            "precision",
            "streams",
            "tok/s",
            "tok/s/stream",
            "ns/token",
            "% roof",
            "tok/J",
            "x FPGA",
            "x ref",
            "max|dlogit|",
            "tokens agree",
            "free run",
            "oracle",
        ];
        let mut lines: Vec<Vec<String>> = Vec::new();
        for row in self.rows() {
            let t = &row.timing;
            let (diff, agree, free, oracle) = match &row.agreement {
                Some(a) => (
                    format!("{:.1e}", a.max_abs_logit_diff),
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
                    ),
                    if a.free_run_identical == a.free_run_tokens {
                        "identical".to_string()
                    } else {
                        format!("{} tok", a.free_run_identical)
                    },
                    a.oracle.clone(),
                ),
                None => ("-".into(), "-".into(), "-".into(), row.info.oracle.name().into()),
            };
            lines.push(vec![
                row.info.name.clone(),
                row.info.backend.clone(),
                row.info.isa.clone(),
                row.info.precision.to_string(),
                row.info.streams.to_string(),
                human_rate(t.tok_per_s),
                human_rate(t.tok_per_s / row.info.streams.max(1) as f64),
                format!("{:.1}", t.ns_per_token),
                self.roof_share(row)
                    .map_or("-".into(), |f| format!("{:.1}", f * 100.0)),
                t.power.tok_per_joule(t.tok_per_s).map_or("-".into(), |j| {
                    format!(
                        "{}{}",
                        human_rate(j),
                        if t.power.is_measured() { "" } else { "*" }
                    )
                }),
                format!("{:.1}", t.tok_per_s / TALOS_CLAIMED_TOK_PER_S),
                reference.map_or("-".into(), |r| format!("{:.2}", t.tok_per_s / r)),
                diff,
                agree,
                free,
                oracle,
            ]);
            if let Some(m) = &row.info.modelled {
                lines.push(vec![
                    m.name.clone(),
                    m.backend.clone(),
                    "-".into(),
                    row.info.precision.to_string(),
                    "1".into(),
                    human_rate(m.tok_per_s),
                    human_rate(m.tok_per_s),
                    format!("{:.1}", 1e9 / m.tok_per_s),
                    "-".into(),
                    "-".into(),
                    format!("{:.2}", m.tok_per_s / TALOS_CLAIMED_TOK_PER_S),
                    reference.map_or("-".into(), |r| format!("{:.3}", m.tok_per_s / r)),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "modelled".into(),
                ]);
            }
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        // Numbers right-aligned, text left-aligned.
        let numeric = [
            false, false, false, false, true, true, true, true, true, true, true, true, true, true, false,
            false,
        ];
        let fmt_line = |cells: Vec<String>| -> String {
            let mut s = String::new();
            for ((c, w), num) in cells.iter().zip(&widths).zip(numeric) {
                let pad = w - c.chars().count();
                if num {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                s.push_str("  ");
            }
            s.trim_end().to_string()
        };
        let mut out = fmt_line(headers.iter().map(|h| h.to_string()).collect());
        out.push('\n');
        out.push_str(&fmt_line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        out.push('\n');
        for l in lines {
            out.push_str(&fmt_line(l));
            out.push('\n');
        }
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
            out.push_str(&format!("skipped {}: {reason}\n", names.join(", ")));
        }
        for row in self.rows() {
            if let Some(ms) = row.info.compile_ms {
                out.push_str(&format!("{}: compiled in {ms:.1} ms\n", row.info.name));
            }
            for note in &row.info.notes {
                out.push_str(&format!("{}: {note}\n", row.info.name));
            }
            if let Some(m) = &row.info.modelled {
                out.push_str(&format!("{}: {}\n", m.name, m.note));
            }
        }
        out.push_str(&format!(
            "tok/J: tokens per joule{}. ",
            if self.options.rapl.is_some() {
                ", measured"
            } else {
                "; * = estimated from the assumed watts per core, not measured"
            }
        ));
        out.push_str(&format!(
            "x FPGA: relative to TALOS-V2's claimed {} tok/s. Oracle rows: fp32 variants are checked \
             against the scalar fp32 reference, Q4.12 variants against the scalar Q4.12 reference.\n",
            TALOS_CLAIMED_TOK_PER_S
        ));
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
                    "window_tokens": row.timing.window_tokens,
                    "windows_tok_per_s": row.timing.windows,
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
        json!({
            "machine": {
                "cpu": self.machine.cpu,
                "arch": self.machine.arch,
                "cores": self.machine.cores,
                "features": self.machine.features,
                "roof": self.roof.map(|r| json!({
                    "isa": r.isa,
                    "lanes": r.lanes,
                    "fma_per_s_per_core": r.per_core,
                    "fma_per_s_all_cores": r.all_cores,
                    "cores": r.cores,
                })),
            },
            "weight_macs_per_token": self.shape.weight_macs(),
            "shape": shape,
            "weights": self.weights,
            "seed": self.options.seed,
            "temperature": self.options.temperature,
            "results": results,
            "modelled": modelled,
            "skipped": skipped,
        })
    }
}

/// 1234567.0 → "1.23 M".
pub fn human_rate(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} K", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_rate;

    #[test]
    fn rates_read_well() {
        assert_eq!(human_rate(1_234_567.0), "1.23 M");
        assert_eq!(human_rate(53_000.0), "53.0 K");
        assert_eq!(human_rate(2.5e9), "2.50 G");
        assert_eq!(human_rate(12.0), "12");
    }
}
