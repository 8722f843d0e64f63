//! Test support: the reference data in `../shared/data` beside the repository.
//!
//! That data (names.txt, the TALOS-V2 weights, golden logits) belongs to other projects and is
//! never copied into this one. Tests that need it call [`shared_data`]: when the folder is absent
//! they print why and skip, unless `MICROGPT_REQUIRE_SHARED=1` (set by `.ci/run` whenever the
//! folder exists), in which case a missing file fails the test instead of skipping it.

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
