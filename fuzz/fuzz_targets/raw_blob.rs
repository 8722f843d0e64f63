//! The raw f32 and Q4.12 blob loaders on arbitrary bytes, at the default shape and at a small
//! one: an error or weights, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microgpt_model::Shape;
use microgpt_weights::{Format, LoadOptions, load_bytes};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let shape = match choice & 1 {
        0 => Shape::DEFAULT,
        _ => Shape::new(5, 4, 4, 2, 1, 3).expect("a valid shape"),
    };
    let format = match (choice >> 1) % 3 {
        0 => Some(Format::RawF32),
        1 => Some(Format::RawQ412),
        _ => None,
    };
    let options = LoadOptions {
        format,
        shape: Some(shape),
    };
    if let Ok(w) = load_bytes(bytes, "fuzz", &options) {
        assert_eq!(*w.shape(), shape);
        assert!(w.data().iter().all(|v| v.is_finite()));
    }
});
