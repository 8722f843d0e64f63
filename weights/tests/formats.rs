//! Loader round trips, every bad-file case, and the reference weights.

use microgpt_model::{Param, Shape};
use microgpt_testdata::shared_data;
use microgpt_weights::{Format, LoadOptions, Weights, load, load_bytes};
use std::path::{Path, PathBuf};

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("microgpt-weights-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn opts(format: Option<Format>, shape: Option<Shape>) -> LoadOptions {
    LoadOptions { format, shape }
}

fn q412_exact(shape: Shape, seed: u64) -> Weights {
    // Values on the Q4.12 grid survive every format exactly.
    let w = Weights::random(shape, seed, 0.3);
    let data = w.data().iter().map(|&v| (v * 4096.0).round() / 4096.0).collect();
    Weights::new(shape, data, "grid").unwrap()
}

fn err_of(bytes: &[u8], o: &LoadOptions) -> String {
    load_bytes(bytes, "file.bin", o).unwrap_err().to_string()
}

#[test]
fn safetensors_round_trip_reads_the_shape_from_the_tensors() {
    for shape in [
        Shape::DEFAULT,
        Shape::new(27, 16, 32, 4, 2, 128).unwrap(),
        Shape::new(5, 3, 6, 3, 3, 7).unwrap(),
    ] {
        let w = Weights::random(shape, 1, 0.08);
        let bytes = w.to_safetensors(&[("note", "test")]);
        let back = load_bytes(&bytes, "mem", &LoadOptions::default()).unwrap();
        assert_eq!(*back.shape(), shape);
        assert_eq!(back.data(), w.data());
        assert!(back.source().contains("safetensors"));
    }
}

#[test]
fn raw_blobs_round_trip_and_are_detected_by_size() {
    let w = q412_exact(Shape::DEFAULT, 2);
    let f32_bytes = w.to_raw_f32();
    assert_eq!(f32_bytes.len(), 16768);
    let back = load_bytes(&f32_bytes, "a.bin", &LoadOptions::default()).unwrap();
    assert_eq!(back.data(), w.data());
    assert!(back.source().ends_with("(f32)"));

    let q_bytes = w.to_raw_q412();
    assert_eq!(q_bytes.len(), 8384);
    let back = load_bytes(&q_bytes, "b.bin", &LoadOptions::default()).unwrap();
    assert_eq!(back.data(), w.data());
    assert!(back.source().ends_with("(q412)"));

    // Another shape, given explicitly.
    let shape = Shape::new(27, 16, 32, 4, 2, 128).unwrap();
    let w = q412_exact(shape, 3);
    let back = load_bytes(&w.to_raw_q412(), "c.bin", &opts(None, Some(shape))).unwrap();
    assert_eq!(back.data(), w.data());
}

#[test]
fn talos_hex_folder_round_trips() {
    let dir = tmp_dir("hex");
    let w = q412_exact(Shape::DEFAULT, 4);
    w.write_talos_hex(&dir).unwrap();
    assert!(dir.join("layer0_attn_wq_q12.hex").is_file());
    let back = load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(back.data(), w.data());
    let forced = load(&dir, &opts(Some(Format::TalosHex), None)).unwrap();
    assert_eq!(forced.data(), w.data());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forced_formats_are_obeyed() {
    let w = q412_exact(Shape::DEFAULT, 5);
    // A Q4.12 blob forced as f32 has the wrong size.
    let e = err_of(&w.to_raw_q412(), &opts(Some(Format::RawF32), None));
    assert!(e.contains("wrong size: 8384 bytes, expected 16768"), "{e}");
    let e = err_of(&w.to_raw_f32(), &opts(Some(Format::Safetensors), None));
    assert!(e.contains("malformed safetensors"), "{e}");
    assert_eq!("q412".parse::<Format>(), Ok(Format::RawQ412));
    assert!(
        "png"
            .parse::<Format>()
            .unwrap_err()
            .contains("unknown weights format `png`")
    );
}

#[test]
fn wrong_size_and_truncation_are_errors_naming_the_file() {
    let e = err_of(&[0u8; 100], &LoadOptions::default());
    assert!(
        e.starts_with("file.bin: unrecognised weights file (100 bytes)"),
        "{e}"
    );
    assert!(e.contains("16768") && e.contains("8384"), "{e}");

    let w = Weights::random(Shape::DEFAULT, 6, 0.08);
    let bytes = w.to_safetensors(&[]);
    for cut in [9, 40, bytes.len() / 2, bytes.len() - 1] {
        let e = err_of(&bytes[..cut], &LoadOptions::default());
        assert!(e.starts_with("file.bin: malformed safetensors"), "cut {cut}: {e}");
    }
    let e = err_of(&w.to_raw_f32()[..16000], &opts(Some(Format::RawF32), None));
    assert!(e.contains("wrong size: 16000 bytes"), "{e}");
}

#[test]
fn non_finite_values_are_errors() {
    let w = Weights::random(Shape::DEFAULT, 7, 0.08);
    let mut raw = w.to_raw_f32();
    raw[4 * 700..4 * 701].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let e = err_of(&raw, &LoadOptions::default());
    assert!(e.contains("tensor `layer0.attn_wq` holds inf at index 12"), "{e}");
}

/// Builds a safetensors file from (name, rows, cols) with zero data.
fn custom_safetensors(tensors: &[(&str, usize, usize)], heads: Option<&str>) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView, serialize};
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|&(n, r, c)| (n.to_string(), vec![r, c], vec![0u8; 4 * r * c]))
        .collect();
    let views = data
        .iter()
        .map(|(n, d, b)| (n.as_str(), TensorView::new(Dtype::F32, d.clone(), b).unwrap()));
    let meta = heads.map(|h| [("heads".to_string(), h.to_string())].into_iter().collect());
    serialize(views, meta).unwrap()
}

fn default_tensors() -> Vec<(&'static str, usize, usize)> {
    vec![
        ("wte", 27, 16),
        ("wpe", 16, 16),
        ("layer0.attn_wq", 16, 16),
        ("layer0.attn_wk", 16, 16),
        ("layer0.attn_wv", 16, 16),
        ("layer0.attn_wo", 16, 16),
        ("layer0.mlp_fc1", 64, 16),
        ("layer0.mlp_fc2", 16, 64),
        ("lm_head", 27, 16),
    ]
}

#[test]
fn inconsistent_or_missing_tensors_are_errors() {
    let d = LoadOptions::default();
    let ok = custom_safetensors(&default_tensors(), Some("4"));
    assert_eq!(*load_bytes(&ok, "f", &d).unwrap().shape(), Shape::DEFAULT);

    let mut t = default_tensors();
    t[7] = ("layer0.mlp_fc2", 16, 32);
    let e = err_of(&custom_safetensors(&t, Some("4")), &d);
    assert!(e.contains("`layer0.mlp_fc2` is 16×32, expected 16×64"), "{e}");

    let mut t = default_tensors();
    t.remove(4);
    let e = err_of(&custom_safetensors(&t, Some("4")), &d);
    assert!(e.contains("tensor `layer0.attn_wv` is missing"), "{e}");

    let mut t = default_tensors();
    t.push(("layer0.ln_gain", 1, 16));
    let e = err_of(&custom_safetensors(&t, Some("4")), &d);
    assert!(
        e.contains("tensor `layer0.ln_gain` is not a microGPT tensor"),
        "{e}"
    );

    let e = err_of(&custom_safetensors(&default_tensors(), Some("5")), &d);
    assert!(e.contains("`embd` must be divisible by `heads`"), "{e}");

    let e = err_of(&custom_safetensors(&default_tensors(), None), &d);
    assert!(e.contains("no `heads`"), "{e}");
    let hinted = load_bytes(
        &custom_safetensors(&default_tensors(), None),
        "f",
        &opts(None, Some(Shape::DEFAULT)),
    );
    assert!(hinted.is_ok());

    let other = Shape::new(27, 16, 32, 4, 2, 128).unwrap();
    let e = err_of(&ok, &opts(None, Some(other)));
    assert!(
        e.contains("the file holds shape vocab=27,block=16,embd=16"),
        "{e}"
    );

    // A layer index gap: layer1 present without layer0's full set.
    let mut t = default_tensors();
    t.push(("layer1.attn_wq", 16, 16));
    let e = err_of(&custom_safetensors(&t, Some("4")), &d);
    assert!(e.contains("tensor `layer1.attn_wk` is missing"), "{e}");

    // The largest layer number a name can hold: too many layers, not an overflow.
    let mut t = default_tensors();
    t.push(("layer18446744073709551615.attn_wq", 16, 16));
    let e = err_of(&custom_safetensors(&t, Some("4")), &d);
    assert!(e.contains("`layers`"), "{e}");
}

fn write_hex(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn bad_rom_folders_are_errors_naming_the_file() {
    let dir = tmp_dir("badhex");
    let w = q412_exact(Shape::DEFAULT, 8);
    w.write_talos_hex(&dir).unwrap();
    let d = LoadOptions::default();

    write_hex(&dir, "wpe_q12.hex", &"0001\n".repeat(255));
    let e = load(&dir, &d).unwrap_err().to_string();
    assert!(e.contains("wpe_q12.hex: 255 words, expected 256"), "{e}");

    let mut lines = "0001\n".repeat(256);
    lines.replace_range(5 * 7..5 * 7 + 4, "00g1");
    write_hex(&dir, "wpe_q12.hex", &lines);
    let e = load(&dir, &d).unwrap_err().to_string();
    assert!(
        e.contains("wpe_q12.hex: line 8: `00g1` is not a 16-bit hex word"),
        "{e}"
    );

    write_hex(&dir, "wpe_q12.hex", &"12345\n".repeat(256));
    let e = load(&dir, &d).unwrap_err().to_string();
    assert!(e.contains("line 1: `12345`"), "{e}");

    std::fs::remove_file(dir.join("wpe_q12.hex")).unwrap();
    let e = load(&dir, &d).unwrap_err().to_string();
    assert!(e.contains("ROM file `wpe_q12.hex` is missing"), "{e}");

    let e = load(&dir.join("nope"), &d).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
    let e = load(&dir.join("lm_head_q12.hex"), &opts(Some(Format::TalosHex), None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("folder"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_three_reference_weight_files_agree() {
    let (Some(f32_path), Some(q_path), Some(hex_dir)) = (
        shared_data("talos/weights_fp32.bin", "the_three_reference_weight_files_agree"),
        shared_data("talos/weights_q412.bin", "the_three_reference_weight_files_agree"),
        shared_data("talos", "the_three_reference_weight_files_agree"),
    ) else {
        return;
    };
    let d = LoadOptions::default();
    let fp = load(&f32_path, &d).unwrap();
    let q = load(&q_path, &d).unwrap();
    let hex = load(&hex_dir, &d).unwrap();
    assert_eq!(q.data(), hex.data(), "the Q4.12 blob equals the ROMs");
    assert_eq!(
        fp.quantized(),
        hex.quantized(),
        "the specified rounding reproduces the ROMs"
    );
    // Spot values from the TALOS spec: wte word 0 is 0x0216.
    assert_eq!(hex.quantized()[0], 0x0216);
    assert_eq!(hex.tensor(Param::Wte).len(), 432);
}
