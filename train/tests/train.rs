//! The trainer: gradients against finite differences, learning, determinism, the NLL of docs/spec.md.

use microgpt_model::Shape;
use microgpt_model::numerics::max_error;
use microgpt_runtime::Reference;
use microgpt_runtime::reference::math::softmax;
use microgpt_testdata::shared_data;
use microgpt_train::backward::Backprop;
use microgpt_train::{Dataset, Recipe, TrainConfig, nll, train};
use microgpt_weights::{LoadOptions, Weights, load};

const SMALL_CORPUS: &str = "emma\nolivia\nava\nisabella\nsophia\ncharlotte\nmia\namelia\nharper\nevelyn\n\
abigail\nemily\nelizabeth\nmila\nella\navery\nsofia\ncamila\naria\nscarlett\nvictoria\nmadison\nluna\n\
grace\nchloe\npenelope\nlayla\nriley\nzoey\nnora\nlily\neleanor\nhannah\nlillian\naddison\naubrey\n\
ellie\nstella\nnatalie\nzoe\nleah\nhazel\nviolet\naurora\nsavannah\naudrey\nbrooklyn\nbella\nclaire\nskylar\n";

fn loss_f64(engine: &mut Reference<f64>, inputs: &[usize], targets: &[usize]) -> f64 {
    let mut loss = 0.0;
    for (pos, (&t, &y)) in inputs.iter().zip(targets).enumerate() {
        let mut p = engine.forward(t, pos).to_vec();
        softmax(&mut p);
        loss -= p[y].ln();
    }
    loss
}

/// Every gradient of a small two-layer shape against central differences, in f64.
#[test]
fn gradients_match_finite_differences() {
    let shape = Shape::new(5, 4, 4, 2, 2, 6).unwrap();
    let weights = Weights::random(shape, 11, 0.5);
    let (inputs, targets) = ([4, 1, 2, 0], [1, 2, 0, 4]);

    let mut engine = Reference::<f64>::new(&weights);
    let mut backprop = Backprop::new(&engine);
    let mut grads = vec![0.0f64; shape.param_count()];
    let loss = backprop.sequence(&mut engine, &inputs, &targets, 1.0, &mut grads);
    assert!((loss - loss_f64(&mut engine, &inputs, &targets)).abs() < 1e-12);

    let h = 1e-6;
    let mut worst = 0.0f64;
    for (i, &analytic) in grads.iter().enumerate() {
        let w0 = engine.weights()[i];
        engine.weights_mut()[i] = w0 + h;
        let up = loss_f64(&mut engine, &inputs, &targets);
        engine.weights_mut()[i] = w0 - h;
        let down = loss_f64(&mut engine, &inputs, &targets);
        engine.weights_mut()[i] = w0;
        let numeric = (up - down) / (2.0 * h);
        let err = (numeric - analytic).abs() / (1e-4 + numeric.abs().max(analytic.abs()));
        worst = max_error(worst, err);
        assert!(err < 1e-5, "param {i}: analytic {analytic} numeric {numeric}");
    }
    // Guard against a vacuous pass: gradients are far from zero.
    assert!(grads.iter().map(|g| g.abs()).sum::<f64>() > 1.0);
    eprintln!("worst relative gradient error {worst:.2e}");
}

fn small_config(steps: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch,
        seed: 3,
        ..TrainConfig::recipe(Recipe::Default)
    }
}

#[test]
fn a_few_hundred_steps_reduce_the_loss() {
    let data = Dataset::parse(SMALL_CORPUS, &Shape::DEFAULT, "corpus").unwrap();
    let cfg = small_config(300, 8);
    let before = nll(&Weights::random(Shape::DEFAULT, cfg.seed, cfg.init_std), &data);
    let mut losses = Vec::new();
    let w = train(&data, &cfg, &mut |r| losses.push(r.loss));
    let after = nll(&w, &data);
    assert_eq!(losses.len(), 300);
    assert!(before > 3.0, "random init scores about ln 27: {before}");
    assert!(after < before - 0.8, "NLL {before} -> {after}");
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[280..].iter().sum::<f64>() / 20.0;
    assert!(last < first - 0.8, "running loss {first} -> {last}");
}

#[test]
fn training_is_deterministic_for_any_thread_count() {
    let data = Dataset::parse(SMALL_CORPUS, &Shape::DEFAULT, "corpus").unwrap();
    let cfg = small_config(20, 24);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| train(&data, &cfg, &mut |_| {}))
    };
    let one = run(1);
    assert_eq!(one.data(), run(2).data());
    assert_eq!(one.data(), run(3).data());
    let other_seed = train(
        &data,
        &TrainConfig {
            seed: 4,
            ..cfg.clone()
        },
        &mut |_| {},
    );
    assert_ne!(one.data(), other_seed.data());
}

#[test]
fn dataset_wraps_names_in_bos_and_cuts_at_block() {
    let shape = Shape::new(27, 4, 4, 1, 1, 4).unwrap();
    let data = Dataset::parse("ab\n\nabcdefg\n", &shape, "t").unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.sequence(0), (vec![26, 0, 1], vec![0, 1, 26]));
    assert_eq!(data.sequence(1), (vec![26, 0, 1, 2], vec![0, 1, 2, 3]));
    assert_eq!(data.predictions(), 3 + 4);
    let e = Dataset::parse("ab\nA-b\n", &shape, "names.txt").unwrap_err();
    assert!(e.starts_with("names.txt:2: character 'A' has no token"), "{e}");
    assert!(
        Dataset::parse("\n\n", &shape, "x")
            .unwrap_err()
            .contains("no names")
    );
}

/// The TALOS weights score 2.3656 on names.txt (docs/spec.md#nll).
#[test]
fn talos_weights_score_the_documented_nll() {
    let test = "talos_weights_score_the_documented_nll";
    let (Some(names), Some(weights)) = (
        shared_data("names.txt", test),
        shared_data("talos/weights_fp32.bin", test),
    ) else {
        return;
    };
    let data = Dataset::parse(
        &std::fs::read_to_string(names).unwrap(),
        &Shape::DEFAULT,
        "names.txt",
    )
    .unwrap();
    assert_eq!(data.len(), 32_033);
    let w = load(&weights, &LoadOptions::default()).unwrap();
    let score = nll(&w, &data);
    assert!((score - 2.3656).abs() < 5e-5, "NLL {score}");
}
