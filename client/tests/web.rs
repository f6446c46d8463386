//! Browser tests (headless Chromium through wasm-bindgen-test-runner; `cargo xtask test` runs
//! them twice: with `--enable-unsafe-webgpu`, where Chromium offers a software WebGPU adapter, and
//! without it, where the client must fall back to the CPU).
//!
//! When compiled with `VEIL_EXPECT_BACKEND=webgpu` (or `cpu`) the tests also assert which backend
//! the session picked, so a silent fallback cannot pass for a WebGPU run.
#![cfg(target_arch = "wasm32")]

use veil::crypto::keyfile::KdfCost;
use veil::data::digits;
use veil_client::{Backend, Session};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn expected_backend() -> Option<&'static str> {
    option_env!("VEIL_EXPECT_BACKEND")
}

/// The Haar rotations of the test key, by both derivations, are bit-identical to the native
/// ones: their SHA-256 equal the digests pinned by the native test
/// `haar::tests::pinned_digest_for_the_test_vector_key`.
#[wasm_bindgen_test]
fn haar_rotation_is_bit_identical_to_native() {
    let rot = veil::crypto::testvectors::haar_test_rotation();
    assert_eq!(
        veil::crypto::keys::to_hex(&rot.digest()),
        veil::crypto::testvectors::HAAR_DIGEST_64
    );
    let rot = veil::crypto::testvectors::householder_test_rotation();
    assert_eq!(
        veil::crypto::keys::to_hex(&rot.digest()),
        veil::crypto::testvectors::HOUSEHOLDER_DIGEST_64
    );
}

async fn check_reference_logits(session: &Session) {
    let card = session.model_card().clone();
    let (_, test) = digits().split(card.split.0, card.split.1);
    let reference = test.subset(&card.reference_indices);
    let logits = session.logits(&reference.images).await.expect("logits");
    assert_eq!(logits.len(), card.reference_logits.len());
    let worst = logits
        .iter()
        .zip(&card.reference_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    web_sys::console::log_1(
        &format!(
            "backend {:?}: max |logit - native| = {worst:e}",
            session.backend()
        )
        .into(),
    );
    assert!(
        worst < 1e-4,
        "max logit difference {worst} on {:?}",
        session.backend()
    );
    // And the predictions agree with the labels as often as natively (all 16 are right there).
    let k = card.classes.len();
    let predicted = veil::nn::train::argmax_rows(&logits, k);
    let native = veil::nn::train::argmax_rows(&card.reference_logits, k);
    assert_eq!(predicted, native);
}

#[wasm_bindgen_test]
async fn demo_model_matches_native_on_the_cpu() {
    let session = Session::start(false).await.expect("session");
    assert_eq!(session.backend().label(), "cpu");
    check_reference_logits(&session).await;
}

#[wasm_bindgen_test]
async fn demo_model_matches_native_on_the_preferred_device() {
    let session = Session::start(true).await.expect("session");
    if let Some(expected) = expected_backend() {
        assert_eq!(
            session.backend().label(),
            expected,
            "{:?}",
            session.backend()
        );
    }
    if let Backend::Cpu { reason } = session.backend() {
        assert!(!reason.is_empty());
    }
    check_reference_logits(&session).await;
    // classify() reports a probability vector that sums to 1.
    let (_, test) = digits().split(0.2, 7);
    let c = session.classify(test.image(0)).await.expect("classify");
    assert_eq!(c.label, test.labels[0]);
    let total: f32 = c.probabilities.iter().sum();
    assert!((total - 1.0).abs() < 1e-5);
}

#[wasm_bindgen_test]
async fn key_export_import_round_trip_in_the_browser() {
    let session = Session::start(false).await.expect("session");
    let fp = session.generate_key("browser test").unwrap();
    let file = session
        .export_key_with_cost(Some("pass phrase"), KdfCost::INSECURE_FOR_TESTS)
        .unwrap();
    session.forget_key();
    assert!(session.fingerprint().is_none());
    let err = session.import_key(&file, Some("wrong")).unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert_eq!(session.import_key(&file, Some("pass phrase")).unwrap(), fp);
    assert_eq!(session.key_name(), "browser test");
    // Bad input never panics: a clear error.
    let err = session.classify(&[0.5; 3]).await.unwrap_err();
    assert!(err.to_string().contains("expected one"), "{err}");
}
