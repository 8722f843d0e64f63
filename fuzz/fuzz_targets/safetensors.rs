//! The safetensors loader on arbitrary bytes (header length, JSON header, offsets, dtypes,
//! shapes, metadata): an error or weights, never a panic; what loads is finite and sized for its
//! shape. The first byte chooses whether a shape is expected (as `--shape` does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use microgpt_model::Shape;
use microgpt_weights::{Format, LoadOptions, load_bytes, safetensors_metadata};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let shape = (choice & 1 == 1).then_some(Shape::DEFAULT);
    let _ = safetensors_metadata(bytes);
    for format in [Some(Format::Safetensors), None] {
        if let Ok(w) = load_bytes(bytes, "fuzz", &LoadOptions { format, shape }) {
            assert_eq!(w.data().len(), w.shape().param_count());
            assert!(w.data().iter().all(|v| v.is_finite()));
        }
    }
});
