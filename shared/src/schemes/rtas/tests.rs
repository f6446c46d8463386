//! The protocol against the plaintext computation, within the fixed-point bound; the frames'
//! checks; a party that drops.

use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::attacks::black_box::agreement;
use crate::schemes::rtas::wire::{
    InMemoryTransport, decode_frame, encode_frame, in_memory_network,
};

const F: u32 = 16;
const ULP: f64 = 1.0 / (1u64 << F) as f64;

/// Runs `body` on P0 and P1 (with a dealer and a helper) and returns P0's and P1's results.
fn with_parties<R: Send>(
    body: impl Fn(&mut Party<InMemoryTransport>) -> Result<R, RtasError> + Sync,
) -> (R, R) {
    let run = RunId([7; 16]);
    let [t0, t1, td, th] = in_memory_network(Duration::from_secs(20));
    let fp = FixedPoint { frac_bits: F };
    std::thread::scope(|s| {
        let dealer = s.spawn(|| {
            Dealer::new(
                Channel::new(td, Role::Dealer, run),
                ChaCha20Rng::seed_from_u64(2),
            )
            .serve()
        });
        let helper = s.spawn(|| {
            Helper::new(
                Channel::new(th, Role::Helper, run),
                fp,
                ChaCha20Rng::seed_from_u64(3),
            )
            .serve()
        });
        let body = &body;
        let p1 = s.spawn(move || {
            let mut p = Party::connect(
                Channel::new(t1, Role::P1, run),
                fp,
                ChaCha20Rng::seed_from_u64(4),
            )
            .unwrap();
            body(&mut p).unwrap()
        });
        let mut p = Party::connect(
            Channel::new(t0, Role::P0, run),
            fp,
            ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
        let r0 = body(&mut p).unwrap();
        p.finish().unwrap();
        let r1 = p1.join().unwrap();
        dealer.join().unwrap().unwrap();
        helper.join().unwrap().unwrap();
        (r0, r1)
    })
}

fn reconstruct(a: &RingMatrix, b: &RingMatrix) -> Vec<f64> {
    a.add(b).decode()
}

fn matrix(rows: usize, cols: usize) -> impl Strategy<Value = PlainMatrix> {
    prop::collection::vec(-8.0f64..8.0, rows * cols)
        .prop_map(move |v| Matrix::from_vec(rows, cols, 0, v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A Beaver matrix product, truncated, reconstructs to the plaintext product within
    /// k·2^-(f+1)·(max|a| + max|b|) (the inputs' rounding) + 2·2^-f (the truncation), where k is
    /// the inner dimension; with |a|, |b| < 8 the truncation fails with probability 2^-(3+3+32+1−64)
    /// per element, never in these cases.
    #[test]
    fn a_shared_matrix_product_matches_the_plaintext_one(
        (a, b) in (1usize..6, 1usize..9, 1usize..6).prop_flat_map(|(m, k, n)| (matrix(m, k), matrix(k, n)))
    ) {
        let (z0, z1) = with_parties(|p| {
            let x = p.share_private((p.role() == Role::P0).then_some(&a), a.rows, a.cols)?;
            let y = p.share_private((p.role() == Role::P0).then_some(&b), b.rows, b.cols)?;
            let z = p.matmul(&x, &y)?;
            Ok(p.truncate(&z))
        });
        let want = Plain.matmul(&a, &b).unwrap();
        let bound = a.cols as f64 * ULP / 2.0 * 16.0 + 2.0 * ULP;
        for (got, want) in reconstruct(&z0, &z1).iter().zip(&want.data) {
            prop_assert!((got - want).abs() <= bound, "{got} vs {want}, bound {bound}");
        }
    }

    /// An element-wise Beaver product, and the permuted sigmoid and ReLU, match the plaintext
    /// within 2^-f·(|a| + |b|)/2 + 2·2^-f and 2^-f·(1/4·|Δz| + 1) respectively.
    #[test]
    fn element_wise_products_and_activations_match_the_plaintext(a in matrix(3, 7), b in matrix(3, 7)) {
        let ((h0, s0, r0, d0), (h1, s1, r1, d1)) = with_parties(|p| {
            let x = p.share_private((p.role() == Role::P0).then_some(&a), 3, 7)?;
            let y = p.share_private((p.role() == Role::P0).then_some(&b), 3, 7)?;
            let h = p.hadamard(&x, &y)?;
            let h = p.truncate(&h);
            let (s, _) = p.activate(&x, Activation::Sigmoid, false)?;
            let (r, d) = p.activate(&x, Activation::Relu, true)?;
            Ok((h, s, r, d.unwrap()))
        });
        let bound = 8.0 * ULP + 2.0 * ULP;
        for (i, got) in reconstruct(&h0, &h1).iter().enumerate() {
            prop_assert!((got - a.data[i] * b.data[i]).abs() <= bound);
        }
        for (i, ((s, r), d)) in reconstruct(&s0, &s1).iter()
            .zip(reconstruct(&r0, &r1)).zip(reconstruct(&d0, &d1)).enumerate() {
            let x = a.data[i];
            prop_assert!((s - 1.0 / (1.0 + (-x).exp())).abs() <= 2.0 * ULP);
            // ReLU of the encoded value: off by the rounding of x and of the result.
            prop_assert!((r - x.max(0.0)).abs() <= 2.0 * ULP);
            if x.abs() > ULP {
                prop_assert_eq!(d, (x > 0.0) as u8 as f64);
            }
        }
    }
}

#[test]
fn the_helper_sees_the_values_in_another_order_and_shares_reveal_nothing_alone() {
    let a = Matrix::from_vec(1, 64, 0, (0..64).map(|i| i as f64).collect());
    let seen = std::sync::Mutex::new(Vec::new());
    let run = RunId([1; 16]);
    let [t0, t1, td, th] = in_memory_network(Duration::from_secs(20));
    let fp = FixedPoint::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            Dealer::new(
                Channel::new(td, Role::Dealer, run),
                ChaCha20Rng::seed_from_u64(2),
            )
            .serve()
            .unwrap()
        });
        s.spawn(|| {
            Helper::new(
                Channel::new(th, Role::Helper, run),
                fp,
                ChaCha20Rng::seed_from_u64(3),
            )
            .observe(|v| seen.lock().unwrap().extend_from_slice(v.values))
            .serve()
            .unwrap()
        });
        s.spawn(|| {
            let mut p = Party::connect(
                Channel::new(t1, Role::P1, run),
                fp,
                ChaCha20Rng::seed_from_u64(4),
            )
            .unwrap();
            let x = p.share_private(None, 1, 64).unwrap();
            p.activate(&x, Activation::Relu, false).unwrap();
        });
        let mut p = Party::connect(
            Channel::new(t0, Role::P0, run),
            fp,
            ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
        let x = p.share_private(Some(&a), 1, 64).unwrap();
        // P0's own share is uniform: none of its elements is the value it stands for.
        assert!(x.decode().iter().zip(&a.data).all(|(s, v)| s != v));
        p.activate(&x, Activation::Relu, false).unwrap();
        p.finish().unwrap();
    });
    let seen = seen.into_inner().unwrap();
    let mut sorted = seen.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        sorted, a.data,
        "the helper reconstructs the multiset exactly"
    );
    let in_place = seen.iter().zip(&a.data).filter(|(s, v)| s == v).count();
    assert!(in_place < 5, "{in_place} of 64 values kept their place");
}

fn frame_pair() -> (Channel<InMemoryTransport>, Channel<InMemoryTransport>) {
    let [t0, t1, ..] = in_memory_network(Duration::from_millis(300));
    let run = RunId([9; 16]);
    (
        Channel::new(t0, Role::P0, run),
        Channel::new(t1, Role::P1, run),
    )
}

#[test]
fn malformed_replayed_and_foreign_frames_are_refused_by_name() {
    let (mut a, mut b) = frame_pair();
    let m = Message::Share(RingMatrix::encode(2, 2, 16, &[1.0, 2.0, 3.0, 4.0]));
    // A good frame passes and bumps the sequence number.
    a.send(Role::P1, &m).unwrap();
    assert_eq!(b.recv(Role::P0).unwrap(), m);
    let counted = b.traffic().received[0];
    assert_eq!(
        counted,
        encode_frame(RunId([9; 16]), Role::P0, 0, &m).len() as u64
    );

    // A replay of frame 0.
    let replay = encode_frame(RunId([9; 16]), Role::P0, 0, &m);
    // Bypass the sender's checks: push bytes straight into its transport.
    let raw = |c: &mut Channel<InMemoryTransport>, f: Vec<u8>| c.send_raw(Role::P1, f);
    raw(&mut a, replay).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(
        err.contains("out-of-order") && err.contains("expected sequence number 1, got 0"),
        "{err}"
    );

    // Another run's frame.
    raw(&mut a, encode_frame(RunId([8; 16]), Role::P0, 1, &m)).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(
        err.contains("protocol run 0808") && err.contains("this run is 0909"),
        "{err}"
    );

    // Truncated, corrupted and foreign bytes.
    let mut good = encode_frame(RunId([9; 16]), Role::P0, 1, &m);
    good.truncate(good.len() - 3);
    raw(&mut a, good).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(
        err.contains("malformed frame from p0") && err.contains("does not fit"),
        "{err}"
    );
    raw(&mut a, b"GET / HTTP/1.1\r\n\r\n".to_vec()).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(err.contains("bad magic"), "{err}");
    let mut v2 = encode_frame(RunId([9; 16]), Role::P0, 1, &m);
    v2[4] = 2;
    raw(&mut a, v2).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(err.contains("protocol version 2"), "{err}");
    // A frame that claims a matrix larger than its bytes.
    let mut huge = encode_frame(
        RunId([9; 16]),
        Role::P0,
        1,
        &Message::Share(RingMatrix::zeros(1, 1, 16)),
    );
    let at = huge.len() - 8 - 1 - 8;
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    raw(&mut a, huge).unwrap();
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    assert!(decode_frame(&[]).is_err());
}

#[test]
fn a_party_that_drops_fails_its_peers_within_the_timeout() {
    let (a, mut b) = frame_pair();
    let started = std::time::Instant::now();
    // Silent but alive: a timeout names the peer.
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(err.contains("p0 sent nothing for 300ms"), "{err}");
    // Gone: disconnected at once.
    drop(a);
    let err = b.recv(Role::P0).unwrap_err().to_string();
    assert!(err.contains("p0 closed its connection"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_run_killed_mid_protocol_ends_every_party_with_an_error() {
    // P1 stops after sharing the first batch: P0, the dealer and the helper must all return.
    let data = crate::data::digits();
    let (train, test) = data.split(0.5, 1);
    let config = RunConfig {
        spec: NetworkSpec::paper_cnn(data.shape, 10),
        fixed_point: FixedPoint::default(),
        lr: 1.0,
        epochs: 1,
        batch_size: 32,
        inference_batch: 256,
        init_seed: 1,
        order_seed: 1,
        positive: 0,
        mode: Mode::Rtas,
        view_batch: None,
    };
    let run = RunId([3; 16]);
    let [t0, t1, td, th] = in_memory_network(Duration::from_secs(3));
    let fp = config.fixed_point;
    let started = std::time::Instant::now();
    let (e0, ed, eh) = std::thread::scope(|s| {
        let d = s.spawn(|| {
            Dealer::new(
                Channel::new(td, Role::Dealer, run),
                ChaCha20Rng::seed_from_u64(2),
            )
            .serve()
        });
        let h = s.spawn(|| {
            Helper::new(
                Channel::new(th, Role::Helper, run),
                fp,
                ChaCha20Rng::seed_from_u64(3),
            )
            .serve()
        });
        s.spawn(move || {
            let mut p = Party::connect(
                Channel::new(t1, Role::P1, run),
                fp,
                ChaCha20Rng::seed_from_u64(4),
            )
            .unwrap();
            p.share_private(None, 1, 1).ok();
            // Killed: the transport drops here.
        });
        let mut p = Party::connect(
            Channel::new(t0, Role::P0, run),
            fp,
            ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
        let sizes = Sizes {
            train: train.len(),
            test: test.len(),
        };
        let e0 =
            run_holder(&mut p, &config, Some((&train, &test)), sizes, &mut |_| {}).unwrap_err();
        drop(p);
        (
            e0,
            d.join().unwrap().unwrap_err(),
            h.join().unwrap().unwrap_err(),
        )
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let e0 = e0.to_string();
    assert!(
        e0.contains("p1 closed its connection") || e0.contains("p1 sent nothing"),
        "{e0}"
    );
    for e in [ed.to_string(), eh.to_string()] {
        assert!(
            e.contains("closed its connection") || e.contains("sent nothing"),
            "{e}"
        );
    }
}

fn quick_config(spec: NetworkSpec, mode: Mode, lr: f64, epochs: usize) -> RunConfig {
    RunConfig {
        spec,
        fixed_point: FixedPoint::default(),
        lr,
        epochs,
        batch_size: 32,
        inference_batch: 1024,
        init_seed: 5,
        order_seed: 6,
        positive: 0,
        mode,
        view_batch: None,
    }
}

/// Training through the protocol tracks plaintext training of the same network from the same
/// initial weights in the same order: RTAS and RTAS-fast on the digits.
#[test]
fn training_through_the_protocol_matches_plaintext_training() {
    let data = crate::data::digits();
    let (train, test) = data.split(0.3, 2);
    let key = crate::crypto::keys::MasterKey::from_bytes([4; 32]);
    for (spec, lr, epochs) in [
        (NetworkSpec::logistic(data.shape), 0.5, 2),
        (NetworkSpec::paper_cnn(data.shape, 10), 1.0, 5),
    ] {
        let config = quick_config(spec, Mode::Rtas, lr, epochs);
        let sizes = Sizes {
            train: train.len(),
            test: test.len(),
        };
        let plain = run_holder(
            &mut Plain,
            &config,
            Some((&train, &test)),
            sizes,
            &mut |_| {},
        )
        .unwrap();
        let truth = run::truth(&config, &test.labels);
        let reference = agreement(&plain.predictions, &truth);
        for mode in [Mode::Rtas, Mode::RtasFast] {
            let config = RunConfig {
                mode,
                ..config.clone()
            };
            let sim = simulate(
                &config,
                &train,
                &test,
                &key,
                Duration::from_secs(30),
                None,
                &mut |_| {},
            )
            .unwrap();
            let acc = agreement(&sim.p0.predictions, &truth);
            eprintln!(
                "{} layers, {mode:?}: plaintext {reference:.4}, protocol {acc:.4}, helper {:?}",
                config.spec.layers.len(),
                sim.helper
            );
            assert!(
                reference > 0.75,
                "the plaintext reference failed: {reference}"
            );
            assert!(
                (acc - reference).abs() <= 0.01,
                "{mode:?}: {acc} vs plaintext {reference}"
            );
            assert_eq!(sim.helper.implausible, 0);
        }
    }
}
