//! `--baseline FILE`: a saved `--json` run, whose rows this run's rows are compared with.

use crate::stats::{self, Change};
use microgpt_model::Shape;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The saved run: each row's window rates, and what the run was of.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// The file, as given.
    pub path: String,
    pub cpu: String,
    pub shape: Shape,
    pub weights: String,
    /// Variant name → its windows' rates (tok/s).
    rows: HashMap<String, Vec<f64>>,
}

impl Baseline {
    /// Reads a `--json` file; a one-line error naming the file when it is not one.
    pub fn load(path: &Path) -> Result<Baseline, String> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--baseline {name}: cannot read: {e}"))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("--baseline {name}: not a bench JSON file: {e}"))?;
        Baseline::from_json(&name, &doc).map_err(|e| format!("--baseline {name}: {e}"))
    }

    /// The baseline in a parsed `--json` document.
    pub fn from_json(path: &str, doc: &Value) -> Result<Baseline, String> {
        let results = doc["results"]
            .as_array()
            .ok_or("not a bench JSON file (no \"results\" list)")?;
        let mut rows = HashMap::new();
        for (i, r) in results.iter().enumerate() {
            let variant = r["variant"]
                .as_str()
                .ok_or_else(|| format!("results[{i}] has no \"variant\""))?;
            let windows: Vec<f64> = r["windows_tok_per_s"]
                .as_array()
                .ok_or_else(|| format!("results[{i}] ({variant}) has no \"windows_tok_per_s\" list"))?
                .iter()
                .map(|w| w.as_f64())
                .collect::<Option<_>>()
                .ok_or_else(|| format!("results[{i}] ({variant}): a window's rate is not a number"))?;
            rows.insert(variant.to_string(), windows);
        }
        let fields = doc["shape"].as_object().ok_or("no \"shape\" object")?;
        let field = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("its shape has no whole number \"{name}\""))
        };
        let shape = Shape::new(
            field("vocab")?,
            field("block")?,
            field("embd")?,
            field("heads")?,
            field("layers")?,
            field("mlp")?,
        )
        .map_err(|e| format!("its shape: {e}"))?;
        Ok(Baseline {
            path: path.to_string(),
            cpu: doc["machine"]["cpu"]
                .as_str()
                .unwrap_or("unknown CPU")
                .to_string(),
            shape,
            weights: doc["weights"].as_str().unwrap_or("unknown weights").to_string(),
            rows,
        })
    }

    /// The same row of the saved run compared with `windows` (this run's rates); `None` when the
    /// saved run has no such row.
    pub fn compare(&self, variant: &str, windows: &[f64]) -> Option<Change> {
        stats::compare(windows, self.rows.get(variant)?)
    }

    /// Rows of the saved run.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Verdict;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "machine": {"cpu": "Example CPU"},
            "shape": {"vocab": 27, "block": 16, "embd": 16, "heads": 4, "layers": 1, "mlp": 64},
            "weights": "example weights",
            "results": [
                {"variant": "reference", "windows_tok_per_s": [100.0, 101.0, 99.0, 100.0, 100.5]},
            ],
        })
    }

    #[test]
    fn rows_compare_by_name() {
        let b = Baseline::from_json("base.json", &doc()).unwrap();
        assert_eq!((b.cpu.as_str(), b.shape), ("Example CPU", Shape::DEFAULT));
        let c = b
            .compare("reference", &[150.0, 151.0, 149.0, 150.0, 150.5])
            .unwrap();
        assert_eq!(c.verdict, Verdict::Faster);
        assert_eq!(b.compare("other", &[1.0]), None);
    }

    #[test]
    fn a_file_that_is_not_a_run_is_named() {
        let cases = [
            (json!({}), "no \"results\" list"),
            (
                json!({"results": [{"windows_tok_per_s": []}]}),
                "has no \"variant\"",
            ),
            (json!({"results": [{"variant": "a"}]}), "no \"windows_tok_per_s\""),
            (
                json!({"results": [{"variant": "a", "windows_tok_per_s": ["x"]}]}),
                "not a number",
            ),
            (json!({"results": []}), "no \"shape\""),
            (json!({"results": [], "shape": {}}), "no whole number \"vocab\""),
            (
                json!({"results": [], "shape": {"vocab": 27, "block": 16, "embd": 16, "heads": 5, "layers": 1, "mlp": 64}}),
                "its shape: `embd` must be divisible by `heads`",
            ),
        ];
        for (d, want) in cases {
            let e = Baseline::from_json("b.json", &d).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("microgpt-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = Baseline::load(&bad).unwrap_err();
        assert!(
            e.starts_with("--baseline ") && e.contains("not a bench JSON file"),
            "{e}"
        );
        let e = Baseline::load(&dir.join("missing.json")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
