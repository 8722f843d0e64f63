//! Writes the fuzz targets' seed corpora into `corpus/<target>/` from real inputs: the embedded
//! trained weights as safetensors and raw blobs, their TALOS-V2 ROM files, the shipped shapes,
//! and the `kernels!` invocations of the shipped shape crates; with the reference data beside the
//! repository, the TALOS-V2 weights' ROM files too.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let w = microgpt_weights::default_weights();
    let st = corpus.join("safetensors");
    let mut with_shape = vec![1u8];
    with_shape.extend(w.to_safetensors(&[]));
    write(&st, "trained-expected-shape", &with_shape);
    let mut detected = vec![0u8];
    detected.extend(w.to_safetensors(&[]));
    write(&st, "trained", &detected);

    let raw = corpus.join("raw_blob");
    // The first byte: bit 0 the shape (0 default), bits 1.. the format (0 f32, 1 Q4.12, 2 detect).
    for (choice, bytes) in [(0u8, w.to_raw_f32()), (2, w.to_raw_q412()), (4, w.to_raw_f32())] {
        let mut seed = vec![choice];
        seed.extend(bytes);
        write(&raw, &format!("trained-{choice}"), &seed);
    }

    let hex = corpus.join("talos_hex");
    let tmp = std::env::temp_dir().join(format!("microgpt-seeds-{}", std::process::id()));
    w.write_talos_hex(&tmp).unwrap();
    let shared = root.join("../../shared/data/talos");
    for dir in [tmp.as_path(), shared.as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".hex") {
                let tag = if dir == tmp { "trained" } else { "talos" };
                write(&hex, &format!("{tag}-{name}"), &std::fs::read(e.path()).unwrap());
            }
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();

    let shapes = corpus.join("shape");
    for (i, s) in [
        "",
        "vocab=27,block=16,embd=16,heads=4,layers=1,mlp=64",
        "embd=32,layers=2,mlp=128",
        "embd=18,heads=3,mlp=202",
        "vocab=3,embd=4,heads=1,block=3,mlp=8",
    ]
    .iter()
    .enumerate()
    {
        write(&shapes, &format!("shape-{i}"), s.as_bytes());
    }

    let kernels = corpus.join("kernels_input");
    let crates = root.join("../kernels/shapes");
    for e in std::fs::read_dir(&crates).unwrap().flatten() {
        let lib = e.path().join("src/lib.rs");
        let Ok(text) = std::fs::read_to_string(&lib) else {
            continue;
        };
        // The tokens between `kernels! {` and the matching `}`.
        let Some(start) = text.find("kernels! {") else {
            continue;
        };
        let body = &text[start + "kernels! {".len()..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(body.len(), |(i, _)| i);
        let name = e.file_name().to_string_lossy().into_owned();
        write(&kernels, &name, body[..end].trim().as_bytes());
    }
    for dir in ["safetensors", "raw_blob", "talos_hex", "shape", "kernels_input"] {
        let n = std::fs::read_dir(corpus.join(dir)).map_or(0, |d| d.count());
        println!("corpus/{dir}: {n} seeds");
    }
}
