//! Property tests of the emulator. TALOS-V2 takes one shape (the default) and computes in its
//! own arithmetic, so no reference of this project predicts its integers (the RTL vectors in
//! `talos.rs` do); what random inputs can check is that its two builds agree and that its outputs
//! are consistent: random weights at several scales, random tokens, temperatures and random
//! states, steps through every position, sampling and direct (argmax) mode mixed.

use microgpt_model::Shape;
use microgpt_talos::{StepInput, Talos};
use microgpt_testdata::props::{config, saturating_scales};
use microgpt_weights::Weights;
use proptest::prelude::*;

/// One step's inputs after the first: a token, whether to sample, the temperature code.
fn steps() -> impl Strategy<Value = Vec<(usize, bool, u16)>> {
    proptest::collection::vec(
        (0..Shape::DEFAULT.vocab, any::<bool>(), 1u16..=u16::MAX),
        Shape::DEFAULT.block - 1,
    )
}

proptest! {
    #![proptest_config(config(256, 256))]

    #[test]
    fn both_builds_agree_and_direct_mode_is_the_argmax(
        scale in saturating_scales(), seed in any::<u64>(), rng in 1u32..=u32::MAX, steps in steps()
    ) {
        let weights = Weights::random(Shape::DEFAULT, seed, scale);
        let mut fast = Talos::new(&weights).unwrap();
        let mut portable = Talos::new(&weights).unwrap().portable();
        let mut state = rng;
        let first = (Shape::DEFAULT.bos(), true, 128);
        for (pos, (token, sample, theta)) in std::iter::once(first).chain(steps).enumerate() {
            let input = StepInput { token, pos, clear: pos == 0, rng: state, theta, sample };
            let a = fast.step(input).unwrap();
            let b = portable.step(input).unwrap();
            prop_assert_eq!(a, b, "step {} differs between the builds", pos);
            prop_assert_eq!(fast.logits(), portable.logits());
            let logits = fast.logits();
            let top = *logits.iter().max().unwrap();
            prop_assert_eq!(a.top, top, "top is the largest logit");
            prop_assert_eq!(logits[a.argmax], top);
            prop_assert!(logits[..a.argmax].iter().all(|&l| l < top), "the first maximum");
            if sample {
                prop_assert_ne!(a.rng, state, "sampling advances the state");
            } else {
                prop_assert_eq!(a.next, a.argmax, "direct mode draws the argmax");
                prop_assert_eq!(a.rng, state, "direct mode leaves the state");
            }
            prop_assert!(a.next < Shape::DEFAULT.vocab);
            state = a.rng;
        }
    }
}
