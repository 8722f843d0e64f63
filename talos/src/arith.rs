//! TALOS-V2's integer primitives, bit for bit: signed Q4.12 with floor shifts and saturation, the
//! reciprocal-RMS engine, the attention exponential and divider, and the sampler's weights.

/// The exponential look-up table shared by the attention exp and the sampler: roughly
/// `round(4096 · e^(-i/4))` for `i < 31`, but not exactly (the hardware's values are kept);
/// every index from 31 to 63 gives 1.
pub const EXP_LUT: [u32; 31] = [
    4096, 3189, 2484, 1935, 1507, 1174, 914, 712, 555, 432, 337, 262, 204, 159, 124, 97, 75, 59, 46, 36, 28,
    22, 17, 13, 10, 8, 6, 5, 4, 3, 2,
];

/// The LUT at a 6-bit index.
#[inline]
pub fn lut(index: u32) -> u32 {
    EXP_LUT.get((index & 63) as usize).copied().unwrap_or(1)
}

/// Clamp to [-32768, 32767].
#[inline]
pub fn sat16(v: i64) -> i16 {
    v.clamp(i16::MIN as i64, i16::MAX as i64) as i16
}

/// `SAT16(floor(a·b / 2^12))`.
#[inline]
pub fn mulq(a: i16, b: i16) -> i16 {
    sat16((a as i64 * b as i64) >> 12)
}

/// `SAT16(a + b)`, formed wide.
#[inline]
pub fn adds(a: i16, b: i16) -> i16 {
    sat16(a as i64 + b as i64)
}

/// `floor(sqrt(v))`, exactly.
pub fn isqrt(v: u64) -> u64 {
    if v == 0 {
        return 0;
    }
    let mut x = (v as f64).sqrt() as u64;
    // Correct the float estimate to the exact floor.
    while x * x > v {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= v {
        x += 1;
    }
    x
}

/// The reciprocal-RMS engine. `ss` is Σ floor(x²/4096); returns the Q4.12 scale and whether the
/// engine took its 25-cycle-shorter clamp path (`d ≤ 512`, a tiny vector).
pub fn rms_scale(ss: u64) -> (i16, bool) {
    let a = ss / 16 + 1;
    let d = isqrt(a * 4096);
    if d <= 512 {
        (32767, true)
    } else {
        // 2^24 / 513 = 32704 at most: always in range.
        (((1u32 << 24) / d as u32) as i16, false)
    }
}

/// The attention exponential of a score difference `delta ≤ 0` (a 32-bit Q12 value): the LUT at
/// `floor((-delta + 511) / 1024)`, cut to 6 bits (so gaps of 16 nats and more wrap around).
#[inline]
pub fn expa(delta: i32) -> u32 {
    if delta >= 0 {
        return 4096;
    }
    let i = ((-(delta as i64) + 511) / 1024) as u32;
    lut(i)
}

/// The attention-output divider: a magnitude quotient of the low 32 bits of `|n|`, so the signed
/// result truncates toward zero; saturated.
#[inline]
pub fn divs(n: i64, s: u32) -> i16 {
    let neg = n < 0;
    let mag = (n.unsigned_abs() & 0xFFFF_FFFF) as u32;
    let den = if s == 0 { 1 } else { s };
    let q = (mag / den) as i64;
    sat16(if neg { -q } else { q })
}

/// The temperature buckets of the Q8.8 code `theta` applied to a logit gap `delta ≤ 0`.
#[inline]
pub fn tshift(delta: i32, theta: u16) -> i32 {
    match theta {
        0..=128 => delta << 1,
        129..=256 => delta,
        257..=512 => delta >> 1,
        _ => delta >> 2,
    }
}

/// The sampler's weight of a (temperature-shifted) gap: linear interpolation between quarter-nat
/// LUT points in 1/16-nat steps, the step index cut to 8 bits, everything in wrapping u32
/// arithmetic, never 0.
#[inline]
pub fn sample_weight(delta: i32) -> u32 {
    if delta >= 0 {
        return 4096;
    }
    let f = (((-(delta as i64) + 127) / 256) & 0xFF) as u32;
    let (c, phi) = (f >> 2, f & 3);
    let (w0, w1) = (lut(c), lut((c + 1) & 63));
    let dif = w0.wrapping_sub(w1);
    let w = w0.wrapping_sub(dif.wrapping_mul(phi) >> 2);
    if w == 0 { 1 } else { w }
}

/// TALOS-V2's host encoding of a temperature as Q8.8: `round(T · 256)`, ties to even, clamped to
/// u16.
pub fn theta_of(temperature: f32) -> u16 {
    (temperature as f64 * 256.0).round_ties_even().clamp(0.0, 65535.0) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_scale_table() {
        let table = [
            (0, 32767),
            (954, 32767),
            (1023, 32767),
            (1024, 32577),
            (4096, 16368),
            (16384, 8192),
            (65536, 4096),
            (262144, 2048),
            (1_000_000, 1048),
            (4_194_304, 512),
        ];
        for (ss, want) in table {
            assert_eq!(rms_scale(ss).0, want, "ss {ss}");
        }
        assert!(
            rms_scale(1023).1 && !rms_scale(1024).1,
            "the clamp path ends at ss = 1023"
        );
    }

    #[test]
    fn isqrt_is_exact() {
        for v in [
            0u64,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            266_240,
            u32::MAX as u64,
            (1 << 40) - 1,
            1 << 40,
        ] {
            let r = isqrt(v);
            assert!(r * r <= v && (r + 1) * (r + 1) > v, "{v}");
        }
    }

    #[test]
    fn expa_table_and_wrap() {
        let cases = [
            (-512, 4096),
            (-513, 3189),
            (-1536, 3189),
            (-4096, 1507),
            (-31744, 1),
            (-65024, 1),
            (-65025, 4096),
            (-65535, 4096),
            (0, 4096),
        ];
        for (delta, want) in cases {
            assert_eq!(expa(delta), want, "delta {delta}");
        }
    }

    #[test]
    fn divs_truncates_toward_zero() {
        assert_eq!(divs(-7, 2), -3);
        assert_eq!(divs(7, 2), 3);
        assert_eq!(divs(-1, 4096), 0);
        assert_eq!(divs(5, 0), 5, "a zero denominator divides by 1");
        assert_eq!(
            divs(1 << 40, 1),
            0,
            "only the low 32 bits of the magnitude are divided"
        );
        assert_eq!(divs(40_000 * 4096, 4096), 32767);
    }

    #[test]
    fn sampler_weight_examples() {
        let cases: [(i32, u32); 12] = [
            (-128, 4096),
            (-383, 3870),
            (-1024, 3189),
            (-2000, 2484),
            (-8064, 595),
            (-64640, 1),
            (-64896, 3_221_226_497),
            (-65152, 3_221_227_521),
            (-65408, 3_221_228_545),
            (-65409, 4096),
            (-70000, 1424),
            (-131070, 4096),
        ];
        for (delta, want) in cases {
            assert_eq!(sample_weight(delta), want, "delta {delta}");
        }
    }

    #[test]
    fn temperature_buckets() {
        assert_eq!(tshift(-100, 0), -200);
        assert_eq!(tshift(-100, 128), -200);
        assert_eq!(tshift(-100, 129), -100);
        assert_eq!(tshift(-101, 257), -51, "floor, not truncation");
        assert_eq!(tshift(-101, 513), -26);
        assert_eq!(theta_of(0.5), 128);
        assert_eq!(theta_of(1.0), 256);
        assert_eq!(theta_of(4.0), 1024);
    }

    #[test]
    fn primitives() {
        assert_eq!(mulq(-1, 1), -1, "floor shift");
        assert_eq!(mulq(32767, 32767), 32767, "saturates");
        assert_eq!(mulq(4096, -4096), -4096);
        assert_eq!(adds(30000, 30000), 32767);
        assert_eq!(adds(-30000, -30000), -32768);
        assert_eq!(sat16(1 << 40), 32767);
        assert_eq!(lut(31), 1);
        assert_eq!(lut(64), 4096);
    }
}
