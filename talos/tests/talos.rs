//! The TALOS-V2 emulator against the RTL simulation's vectors (the TALOS weights are read from
//! the reference data; the tests skip when it is absent).

use microgpt_model::{Buffer, Shape, detokenize};
use microgpt_talos::{StepInput, Talos, TalosError, Trace};
use microgpt_testdata::shared_data;
use microgpt_weights::{LoadOptions, Weights, load};

fn talos(test: &str) -> Option<Talos> {
    let dir = shared_data("talos", test)?;
    let weights = load(&dir, &LoadOptions::default()).unwrap();
    Some(Talos::new(&weights).unwrap())
}

fn ints(text: &str) -> Vec<i16> {
    text.split_whitespace().map(|v| v.parse().unwrap()).collect()
}

fn buffer_after(trace: &Trace, op: usize) -> &[i16] {
    &trace.ops.iter().find(|(i, ..)| *i == op).expect("op traced").2
}

const BOS: usize = 26;

/// Every intermediate of step 0 of the seed-2 run.
#[test]
fn seed_2_step_0_intermediates() {
    let Some(mut t) = talos("seed_2_step_0_intermediates") else {
        return;
    };
    let mut trace = Trace::default();
    let o = t
        .step_traced(
            StepInput {
                token: BOS,
                pos: 0,
                clear: true,
                rng: 2,
                theta: 128,
                sample: true,
            },
            &mut trace,
        )
        .unwrap();
    assert_eq!(
        buffer_after(&trace, 0),
        ints("-44 -1302 -5698 -471 -83 -263 -816 -150 -283 2671 654 -366 -282 -196 -850 173")
    );
    assert_eq!(trace.rms_scales[0], 10143);
    let rms0 = ints("-109 -3225 -14111 -1167 -206 -652 -2021 -372 -701 6614 1619 -907 -699 -486 -2105 428");
    assert_eq!(buffer_after(&trace, 1), rms0);
    assert_eq!(trace.rms_scales[1], 4096);
    assert_eq!(buffer_after(&trace, 2), rms0, "scale 4096 leaves n = x");
    assert_eq!(
        buffer_after(&trace, 3),
        ints("-1128 4315 1316 -1626 542 -251 2157 -1908 -5063 -2561 3646 2243 621 1511 -6650 -3921")
    );
    assert_eq!(
        buffer_after(&trace, 4),
        ints("-7 -1239 3231 1357 239 1085 -3463 -354 1059 -2873 -4329 2282 547 254 1838 -31")
    );
    let v = ints("-496 -265 232 601 80 551 -13 245 -156 611 -389 160 694 -144 -1757 501");
    assert_eq!(buffer_after(&trace, 5), v);
    assert_eq!(buffer_after(&trace, 6), v, "one position: x_attn = v");
    assert_eq!(
        buffer_after(&trace, 8),
        ints("-11 -3138 -13901 -1309 -259 -494 -2076 31 -647 7493 1724 -1251 -601 -675 -2660 659")
    );
    assert_eq!(trace.rms_scales[2], 4019);
    assert_eq!(
        buffer_after(&trace, 9),
        ints("-11 -3080 -13640 -1285 -255 -485 -2037 30 -635 7352 1691 -1228 -590 -663 -2610 646")
    );
    let hidden = buffer_after(&trace, 11);
    assert_eq!(hidden.len(), 64);
    for (i, &h) in hidden.iter().enumerate() {
        assert_eq!(h, if i == 50 { 746 } else { 0 }, "hidden[{i}]");
    }
    assert_eq!(
        buffer_after(&trace, 13),
        ints("-16 -2962 -14088 -1113 -214 -503 -1845 172 -842 7195 1595 -1275 -589 -641 -2755 697")
    );
    assert_eq!(
        t.logits(),
        ints(
            "4199 -2126 -146 90 34 -6162 -5826 -3455 -2810 1891 2290 39 1798 -1418 -3621 -5714 -19029 -1136 1321 -1412 -9039 -4827 -8050 -11135 -4541 -1219 -10250"
        )
    );
    assert_eq!(buffer_after(&trace, 14), t.logits());
    assert_eq!((o.top, o.argmax, o.rng), (4199, 0, 0x0008_4042));
    let weights: Vec<u32> =
        "4096 193 494 555 525 27 32 97 133 1341 1614 555 1258 262 92 34 1 300 1044 262 7 50 10 2 59 300 4"
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
    assert_eq!(trace.weights, weights);
    assert_eq!((trace.weight_sum, trace.cut, o.next), (13347, 8481, 10));
    assert_eq!(o.cycles, 868);
}

/// Later steps of the same run: logits, top, argmax, RNG, weight sum, cut, next.
#[test]
fn seed_2_later_steps() {
    let Some(mut t) = talos("seed_2_later_steps") else {
        return;
    };
    // (token fed, logits, top, argmax, rng, weight sum, cut, next)
    type Step<'a> = (usize, &'a str, i16, usize, u32, u32, u32, usize);
    let steps: [Step<'_>; 5] = [
        (
            10,
            "11250 -15450 -12288 -8241 7686 -23253 -14664 -3537 5444 -18308 -11955 -2783 -11118 -8242 4987 -20243 -32768 -4176 -8919 -7605 -3140 -14193 -16843 -23385 2195 -11495 -3067",
            11250,
            0,
            0x0800_8C02,
            8683,
            4764,
            4,
        ),
        (
            4,
            "241 -4079 -2823 -1169 886 -12330 -8427 -5452 -22 -8231 -2975 4664 -530 4289 -1923 -10924 -26153 5169 -19 -4584 -7585 -2883 -9184 -7414 1404 -3427 -5892",
            5169,
            17,
            0x2998_D882,
            13197,
            2840,
            11,
        ),
        (
            11,
            "5881 -10473 -8015 -3678 5925 -14576 -11496 -5057 7120 -13603 -8008 1531 -6819 -4602 1797 -14683 -23874 -1364 -5461 -4897 -4265 -9117 -12496 -12156 3921 -6578 -2692",
            7120,
            8,
            0x6398_B906,
            10289,
            9506,
            24,
        ),
        (
            24,
            "7104 -8636 -8355 -1859 2264 -14950 -10192 -10783 -207 -11806 -8200 1856 -8161 5541 -1123 -14910 -28382 -1432 -1802 -4735 -7019 -10165 -11476 -13493 -1461 -6765 3779",
            7104,
            0,
            0xE3B0_281A,
            9122,
            5745,
            13,
        ),
        (
            13,
            "7715 -11455 -12023 -5122 3266 -18918 -11708 -8233 1375 -18226 -13945 -3235 -14493 6973 -549 -19392 -32200 -4014 -5307 -4478 -7667 -15455 -14382 -18249 -1212 -10653 11863",
            11863,
            26,
            0x30D0_7323,
            5179,
            3891,
            26,
        ),
    ];
    let first = t
        .step(StepInput {
            token: BOS,
            pos: 0,
            clear: true,
            rng: 2,
            theta: 128,
            sample: true,
        })
        .unwrap();
    let mut rng = first.rng;
    for (i, (token, logits, top, argmax, want_rng, sum, cut, next)) in steps.into_iter().enumerate() {
        let mut trace = Trace::default();
        let o = t
            .step_traced(
                StepInput {
                    token,
                    pos: i + 1,
                    clear: false,
                    rng,
                    theta: 128,
                    sample: true,
                },
                &mut trace,
            )
            .unwrap();
        assert_eq!(t.logits(), ints(logits), "logits at p{}", i + 1);
        assert_eq!((o.top, o.argmax, o.rng), (top, argmax, want_rng), "p{}", i + 1);
        assert_eq!(
            (trace.weight_sum, trace.cut, o.next),
            (sum, cut, next),
            "p{}",
            i + 1
        );
        rng = o.rng;
    }
}

/// Whole samples under the board's loop, with the cycle count and tok/s.
#[test]
fn seeds_1_to_3_at_half_temperature() {
    let Some(mut t) = talos("seeds_1_to_3_at_half_temperature") else {
        return;
    };
    let cases = [
        (1, [1, 4, 17, 24, 0], "berya", 0x2C6F_5BD0),
        (2, [10, 4, 11, 24, 13], "kelyn", 0x30D0_7323),
        (3, [19, 14, 13, 0, 13], "tonan", 0x1CBF_28F3),
    ];
    for (seed, tokens, text, rng) in cases {
        let s = t.generate(seed, 128, 15).unwrap();
        assert_eq!(s.tokens, tokens, "seed {seed}");
        assert_eq!(detokenize(&Shape::DEFAULT, &s.tokens), text);
        assert_eq!((s.steps, s.rng, s.cycles), (6, rng, 5508), "seed {seed}");
        assert_eq!(s.tok_per_s().round(), 51062.0);
    }
}

#[test]
fn seed_0_is_a_fixed_point_and_greedy_is_anan() {
    let Some(mut t) = talos("seed_0_is_a_fixed_point_and_greedy_is_anan") else {
        return;
    };
    for theta in [0, 128, 256, 1024] {
        let s = t.generate(0, theta, 15).unwrap();
        assert_eq!(detokenize(&Shape::DEFAULT, &s.tokens), "aaaaaaaaaaaaaaa");
        assert_eq!(s.rng, 0);
        assert_eq!(s.steps, 15, "15 emitted tokens end the sample");
    }
    let g = t.greedy().unwrap();
    assert_eq!(g.tokens, [0, 13, 0, 13]);
    assert_eq!(g.rng, 0, "direct mode leaves the RNG alone");
}

/// The RMS clamp path is 25 cycles shorter (seed 2 at θ = 1024 takes it once, at p14).
#[test]
fn cycle_count_includes_the_rms_shortcut() {
    let Some(mut t) = talos("cycle_count_includes_the_rms_shortcut") else {
        return;
    };
    let s = t.generate(2, 1024, 15).unwrap();
    assert_eq!(s.steps, 15);
    assert_eq!(s.tokens[13], 16, "token 'q' fed at position 14");
    assert_eq!(s.cycles, 15_095);
}

/// Samples chained through the RNG (the host's `--count`): each starts from the last one's state.
#[test]
fn chained_samples_continue_the_rng() {
    let Some(mut t) = talos("chained_samples_continue_the_rng") else {
        return;
    };
    let first = t.generate(2, 128, 15).unwrap();
    let second = t.generate(first.rng, 128, 15).unwrap();
    let mut again = t.clone();
    assert_eq!(again.generate(first.rng, 128, 15).unwrap(), second);
    assert_ne!(first.tokens, second.tokens);
}

#[test]
fn refuses_other_shapes_and_out_of_range_inputs() {
    let other = Weights::random(Shape::new(27, 16, 32, 4, 1, 64).unwrap(), 1, 0.1);
    assert_eq!(Talos::new(&other).unwrap_err(), TalosError::Shape(*other.shape()));
    assert!(
        TalosError::Shape(*other.shape())
            .to_string()
            .contains("built for shape")
    );
    let mut t = Talos::new(&Weights::random(Shape::DEFAULT, 1, 0.1)).unwrap();
    let input = StepInput {
        token: 27,
        pos: 0,
        clear: true,
        rng: 1,
        theta: 128,
        sample: true,
    };
    assert_eq!(t.step(input).unwrap_err(), TalosError::Token(27));
    assert_eq!(
        t.step(StepInput {
            token: 0,
            pos: 16,
            ..input
        })
        .unwrap_err(),
        TalosError::Position(16)
    );
    assert_eq!(t.generate(1, 128, 0).unwrap_err(), TalosError::MaxGen(0));
    assert_eq!(t.generate(1, 128, 16).unwrap_err(), TalosError::MaxGen(16));
    // Any weights of the default shape run (here random ones).
    let s = t.generate(7, 128, 15).unwrap();
    assert!(s.steps >= 1 && s.tokens.len() <= 15);
    assert_eq!(Buffer::Logits.len(&Shape::DEFAULT), t.logits().len());
}
