//! Glow trains on the digits: bits/dim on held-out images falls well below the untrained flow's.

use veil::burn::module::Module;
use veil::burn::tensor::Device;
use veil::data::digits;
use veil::flow::glow::{GlowConfig, Preprocess};
use veil::flow::train::{FlowTrainOptions, evaluate_bits_per_dim, train_flow};
use veil::nn::train::Control;

/// The digits' preprocessing and a small Glow of `levels` levels (two steps, 8 hidden channels).
fn small_digits_glow(levels: usize) -> (Preprocess, GlowConfig) {
    let pre = Preprocess {
        bins: 17,
        alpha: 0.05,
    };
    let config = GlowConfig::new(1, 8, 8)
        .with_levels(levels)
        .with_steps(2)
        .with_hidden(8);
    (pre, config)
}

#[test]
fn training_lowers_held_out_bits_per_dim() {
    let _rng = crate::device_rng();
    let (train, test) = digits().split(0.2, 7);
    let train = train.subset(&(0..400).collect::<Vec<_>>());
    let pre = Preprocess {
        bins: 17,
        alpha: 0.05,
    };
    let device = Device::flex().autodiff();
    device.seed(1);
    let config = GlowConfig::new(1, 8, 8)
        .with_levels(2)
        .with_steps(3)
        .with_hidden(32);
    let (s, _) = pre.to_logit(train.images_tensor(0..256, &device), true);
    let glow = config.init(&device).data_init(s);
    let eval = Device::flex();
    let before = evaluate_bits_per_dim(&glow.valid(), &test, pre, &eval);
    let options = FlowTrainOptions {
        epochs: 8,
        batch_size: 32,
        learning_rate: 2e-3,
        warmup_steps: 20,
        ..Default::default()
    };
    let mut last = f32::NAN;
    let glow = train_flow(glow, &train, pre, options, &device, |r| {
        last = r.bits_per_dim;
        Control::Continue
    })
    .unwrap();
    let after = evaluate_bits_per_dim(&glow.valid(), &test, pre, &eval);
    eprintln!(
        "held-out bits/dim: untrained {before:.3}, trained {after:.3} (last train {last:.3})"
    );
    assert!(
        after.is_finite() && after < before - 0.5,
        "before {before}, after {after}"
    );
    // A 17-level pixel costs at most log2(17) = 4.09 bits uniformly; a trained flow beats that.
    assert!(after < 4.09, "after {after}");
}

/// Two epochs, a checkpoint (Adam's state and the flow, both as burnpack bytes), two more epochs
/// from the reloaded flow: the reloaded parameters (values and ids) equal the checkpointed ones,
/// and the resumed run, from the flow in memory or from the reloaded one, is the uninterrupted run
/// exactly.
#[test]
fn a_resumed_run_matches_an_uninterrupted_one() {
    let _rng = crate::device_rng();
    use veil::burn::module::{ModuleVisitor, Param};
    use veil::burn::tensor::Tensor;
    use veil::flow::train::{FlowCheckpoint, train_flow_resumable};
    let (train, test) = digits().split(0.2, 7);
    let train = train.subset(&(0..96).collect::<Vec<_>>());
    let test = test.subset(&(0..64).collect::<Vec<_>>());
    let (pre, config) = small_digits_glow(2);
    let device = Device::flex().autodiff();
    let fresh = || {
        device.seed(5);
        let (s, _) = pre.to_logit(train.images_tensor(0..96, &device), true);
        config.init(&device).data_init(s)
    };
    let options = FlowTrainOptions {
        epochs: 4,
        batch_size: 32,
        warmup_steps: 4,
        ..Default::default()
    };
    let go = |_: &_| Control::Continue;
    let straight = train_flow(fresh(), &train, pre, options, &device, go).unwrap();

    let mut saved: Option<(FlowCheckpoint, Vec<u8>)> = None;
    let at_checkpoint =
        train_flow_resumable(fresh(), &train, pre, options, &device, None, go, |c, g| {
            saved = Some((c.clone(), g.to_bytes().unwrap()));
            if c.epoch == 2 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    let (checkpoint, weights) = saved.unwrap();
    assert_eq!(checkpoint.epoch, 2);
    let reloaded = config.load(&weights, &device).unwrap();

    // The reloaded flow has the same parameters, with the same ids, as the one in memory.
    struct Params(Vec<(String, Vec<f32>)>);
    impl ModuleVisitor for Params {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push((
                p.id.to_string(),
                p.val().inner().into_data().iter::<f32>().collect(),
            ));
        }
    }
    let (mut a, mut b) = (Params(vec![]), Params(vec![]));
    reloaded.visit(&mut a);
    at_checkpoint.visit(&mut b);
    assert_eq!(a.0, b.0);

    let finish = |g| {
        train_flow_resumable(
            g,
            &train,
            pre,
            options,
            &device,
            Some(&checkpoint),
            go,
            |_, _| Control::Continue,
        )
        .unwrap()
    };
    let from_memory = finish(at_checkpoint.clone());
    let from_bytes = finish(reloaded);
    let eval = Device::flex();
    let bpd = |g: &veil::flow::glow::Glow| {
        eval.seed(1);
        evaluate_bits_per_dim(&g.valid(), &test, pre, &eval)
    };
    let (u, m, r, c) = (
        bpd(&straight),
        bpd(&from_memory),
        bpd(&from_bytes),
        bpd(&at_checkpoint),
    );
    eprintln!(
        "bits/dim: uninterrupted {u}, resumed in memory {m}, from bytes {r}, at the checkpoint {c}"
    );
    // Same flow object, restored optimizer state: the very same run.
    assert_eq!(u, m, "uninterrupted {u}, resumed in memory {m}");
    assert_eq!(u, r, "uninterrupted {u}, resumed from bytes {r}");
    assert!(
        c - u > 0.02,
        "the last two epochs changed nothing: {c} → {u}"
    );
}

/// Data-dependent initialisation keeps every parameter trainable: each one gets a gradient, at
/// every level (the ActNorms of level 2 once stayed frozen at their initial statistics, so a flow
/// reloaded from a checkpoint, whose parameters all train, took other steps than the original).
#[test]
fn every_parameter_of_a_data_initialised_flow_gets_a_gradient() {
    let _rng = crate::device_rng();
    use veil::burn::module::{ModuleVisitor, Param};
    use veil::burn::optim::GradientsParams;
    use veil::burn::tensor::Tensor;
    let train = digits();
    let (pre, config) = small_digits_glow(3);
    let device = Device::flex().autodiff();
    let (s, _) = pre.to_logit(train.images_tensor(0..64, &device), true);
    let glow = config.init(&device).data_init(s);
    let (logit, logdet) = pre.to_logit(train.images_tensor(0..32, &device), false);
    let loss = pre.bits_per_dim(&glow.forward(logit), logdet, 64).mean();
    struct Missing<'a>(&'a GradientsParams, usize, usize);
    impl ModuleVisitor for Missing<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.1 += 1;
            if self.0.get::<D>(p.id).is_none() {
                self.2 += 1;
            }
        }
    }
    let grads = GradientsParams::from_grads(loss.backward(), &glow);
    let mut m = Missing(&grads, 0, 0);
    glow.visit(&mut m);
    assert!(m.1 > 20, "{} parameters", m.1);
    assert_eq!(m.2, 0, "{} of {} parameters get no gradient", m.2, m.1);
}
