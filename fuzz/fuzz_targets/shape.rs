//! The shape parser (`--shape`) on arbitrary text: a shape or an error, never a panic; a parsed
//! shape prints as text that parses back to it, and its sizes can be computed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microgpt_model::Shape;

fuzz_target!(|text: &str| {
    if let Ok(shape) = Shape::parse(text) {
        assert_eq!(Shape::parse(&shape.to_string()).unwrap(), shape);
        let _ = (shape.param_count(), shape.weight_macs(), shape.head_dim());
    }
});
