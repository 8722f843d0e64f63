//! Q4.12 fixed point: an i16 holding `value · 4096`.

pub use microgpt_model::numerics::Q412_ONE;

/// The weight quantisation (docs/spec.md#q412-quantisation):
/// `clamp(round_ties_even(w · 4096), -32768, 32767)`.
pub fn q412(w: f32) -> i16 {
    // `as` saturates out-of-range floats (and maps NaN to 0), which is the clamp.
    (w * Q412_ONE).round_ties_even() as i16
}

/// Quantises a slice.
pub fn quantize(values: &[f32]) -> Vec<i16> {
    values.iter().map(|&w| q412(w)).collect()
}

/// The real values of Q4.12 words (exact in f32).
pub fn dequantize(words: &[i16]) -> Vec<f32> {
    words.iter().map(|&q| q as f32 / Q412_ONE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_ties_to_even_and_clamping() {
        assert_eq!(q412(0.0), 0);
        assert_eq!(q412(1.0), 4096);
        assert_eq!(q412(-1.0), -4096);
        // 0.5 / 4096 and 1.5 / 4096 are ties: they go to the even neighbour.
        assert_eq!(q412(0.5 / 4096.0), 0);
        assert_eq!(q412(1.5 / 4096.0), 2);
        assert_eq!(q412(-2.5 / 4096.0), -2);
        assert_eq!(q412(0.6 / 4096.0), 1);
        assert_eq!(q412(7.9999), 32767);
        assert_eq!(q412(8.0), 32767);
        assert_eq!(q412(-8.0), -32768);
        assert_eq!(q412(-100.0), -32768);
    }

    #[test]
    fn dequantize_is_exact() {
        let words = [-32768, -1, 0, 1, 4096, 32767];
        assert_eq!(quantize(&dequantize(&words)), words);
    }
}
