//! Test support: the reference data in `../shared/data` beside the repository, and the space
//! the property tests draw from ([`props`]).
//!
//! That data (names.txt, the TALOS-V2 weights, golden logits) belongs to other projects and is
//! never copied into this one. Tests that need it call [`shared_data`]: when the folder is absent
//! they print why and skip, unless `MICROGPT_REQUIRE_SHARED=1` (set by `.ci/run` whenever the
//! folder exists), in which case a missing file fails the test instead of skipping it.

pub mod props;

use std::path::PathBuf;

/// `../shared/data` relative to the workspace root.
pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .components()
        .collect()
}

/// The path of a reference file under `../shared/data`, or `None` (after printing a skip
/// message naming the test) when it is absent.
///
/// # Panics
/// When the file is absent and `MICROGPT_REQUIRE_SHARED=1`.
pub fn shared_data(file: &str, test: &str) -> Option<PathBuf> {
    let path = shared_data_dir().join(file);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("MICROGPT_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "{test}: {} is missing and MICROGPT_REQUIRE_SHARED=1",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: reference data {} is absent (it lives beside the repository, in ../shared/data)",
        path.display()
    );
    None
}

/// Token sequences covering every position `0..block`: BOS first, then pseudo-random tokens
/// (xorshift32 from `seed`), so teacher-forced checks reach the end of the context.
pub fn full_length_sequences(vocab: usize, block: usize, count: usize, seed: u32) -> Vec<Vec<usize>> {
    let mut x = seed.max(1);
    (0..count)
        .map(|_| {
            let mut seq = vec![vocab - 1];
            seq.extend((1..block).map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as usize >> 3) % vocab
            }));
            seq
        })
        .collect()
}

/// The largest |Δlogit| between `step` (called with each token and position of every sequence
/// of the golden-logits document, from position 0) and the document's float64 logits.
pub fn golden_max_diff(doc: &serde_json::Value, mut step: impl FnMut(usize, usize) -> Vec<f32>) -> f64 {
    let mut worst = 0.0f64;
    for seq in doc["sequences"].as_array().expect("sequences") {
        let tokens = seq["tokens"].as_array().expect("tokens");
        let logits = seq["logits"].as_array().expect("logits");
        assert_eq!(tokens.len(), logits.len(), "one row of logits per token");
        for (pos, (tok, want)) in tokens.iter().zip(logits).enumerate() {
            let got = step(tok.as_u64().expect("token id") as usize, pos);
            let want = want.as_array().expect("logit row");
            assert_eq!(got.len(), want.len(), "vocab");
            for (g, w) in got.iter().zip(want) {
                let d = (*g as f64 - w.as_f64().expect("a number")).abs();
                worst = microgpt_model::numerics::max_error(worst, d);
            }
        }
    }
    worst
}

/// The golden-logits document, or `None` (after a skip message) when the data is absent.
pub fn golden_logits(test: &str) -> Option<serde_json::Value> {
    let path = shared_data("golden_logits_talos.json", test)?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}
