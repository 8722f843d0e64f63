//! One TALOS-V2 ROM file's text, arbitrary: words or an error naming the line, never a panic;
//! every word read is the line's value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microgpt_weights::parse_talos_hex;

fuzz_target!(|text: &str| {
    if let Ok(words) = parse_talos_hex(text, "fuzz.hex") {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        assert_eq!(words.len(), lines.len());
        for (w, l) in words.iter().zip(&lines) {
            assert_eq!(*w as u16, u16::from_str_radix(l, 16).unwrap());
        }
    }
});
