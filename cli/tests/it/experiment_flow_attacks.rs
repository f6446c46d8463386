//! The attacks on flow rotation's key, on the digits with the shipped flows.
//!
//! `veil experiment known-plaintext` with the shipped flows: m = 64 known pairs of
//! a class give its rotation back (to 1e-4: ciphertexts are f32 pixels, and a pixel near 0 or 1
//! keeps few bits of its logit; on exact latents the fit is good to 1e-6, see the unit tests of
//! `veil::attacks::known_plaintext`) and decrypt every other ciphertext of the class, under
//! Algorithm 1 and under Veil's settings (whose cover flow the attacker finds); fewer pairs give a
//! partial decryption whose PSNR grows with n.
//!
//! `veil experiment ciphertext-only`: against the shipped (trained) digits flows, moment matching
//! from ciphertexts alone finds nothing: its rotation is as far from the key as a random one, and
//! its decryptions are no better than the mean of the attacker's own images.

use veil_cli::experiments::flow_attacks::ciphertext_only::CiphertextOnlyResults;
use veil_cli::experiments::flow_attacks::known_plaintext::{KnownPlaintextResults, SettingCurve};

fn curve<'a>(r: &'a KnownPlaintextResults, name: &str) -> &'a SettingCurve {
    r.settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name}"))
}

#[test]
fn known_pairs_break_a_digits_key() {
    let (dir, json) = super::run(&[
        "experiment",
        "known-plaintext",
        "--data",
        "digits",
        "--quick",
    ]);
    let r: KnownPlaintextResults = serde_json::from_value(json).unwrap();
    assert_eq!(r.dim, 64);
    assert_eq!(r.shape, "1×8×8");
    assert_eq!(r.classes, vec![0, 1]);
    assert!(r.victims_per_class >= 16);
    for name in ["algorithm-1", "veil"] {
        let s = curve(&r, name);
        let ns: Vec<usize> = s.curve.iter().map(|p| p.known_pairs).collect();
        assert_eq!(ns, vec![1, 4, 16, 32, 64, 128], "{name}");
        // Below m the rotation is known on a subspace only; at m and beyond, exactly.
        for p in &s.curve {
            if p.known_pairs < 64 {
                assert!(
                    p.rotation_max_error.is_none(),
                    "{name} n = {}",
                    p.known_pairs
                );
                assert!(p.exact < 1.0, "{name} n = {}: {}", p.known_pairs, p.exact);
            } else {
                let err = p.rotation_max_error.expect("full rank");
                assert!(err < 1e-4, "{name} n = {}: A off by {err}", p.known_pairs);
                let rel = p.rotation_relative_error.expect("full rank");
                assert!(rel < 1e-4, "{name} n = {}: A off by {rel}", p.known_pairs);
                assert_eq!(p.exact, 1.0, "{name} n = {}", p.known_pairs);
                assert_eq!(p.rank, 64.0);
            }
            // From a handful of pairs on, the Gram test finds the secret cover flow.
            if p.known_pairs >= 4 {
                assert_eq!(p.decoder_found, 1.0, "{name} n = {}", p.known_pairs);
            }
        }
        // More pairs, better decryptions; the attacker with none gets the prior's mean.
        let psnr: Vec<f64> = s.curve.iter().map(|p| p.psnr_mean).collect();
        assert!(
            psnr.windows(2).all(|w| w[1] >= w[0] - 0.5),
            "{name}: {psnr:?}"
        );
        assert!(s.no_pairs.psnr_mean < psnr[2], "{name}");
        assert!(s.no_pairs.exact == 0.0);
        // Energy in the known span grows about as n/m.
        let half = s.curve.iter().find(|p| p.known_pairs == 32).unwrap();
        assert!(
            half.captured_energy > 0.4 && half.captured_energy < 1.0,
            "{name}: {}",
            half.captured_energy
        );
    }
    assert!(r.not_measured.is_empty());
    assert!(dir.path().join("figure.png").exists());
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("64 known pairs of a class decrypt every other ciphertext"));
}

#[test]
fn other_data_needs_its_flows() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "experiment",
            "known-plaintext",
            "--data",
            "synthetic",
            "--quick",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--flows DIR"), "{err}");
}

#[test]
fn ciphertexts_alone_do_not_break_the_digits_key() {
    let (_dir, json) = super::run(&[
        "experiment",
        "ciphertext-only",
        "--data",
        "digits",
        "--quick",
    ]);
    let r: CiphertextOnlyResults = serde_json::from_value(json).unwrap();
    assert_eq!(r.dim, 64);
    assert_eq!(r.classes, vec![0, 1]);
    assert!(r.data_per_class >= 80 && r.ciphertexts_per_class >= 80);
    assert_eq!(r.flows.len(), 1);
    let q = &r.flows[0];
    assert_eq!(q.flows, "assets/flows/digits");
    // The shipped flows' latents are measurably non-Gaussian, above the estimator's floor.
    assert!(
        q.sliced_w1 > q.sliced_w1_floor,
        "{} {}",
        q.sliced_w1,
        q.sliced_w1_floor
    );
    let names: Vec<&str> = q.settings.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["algorithm-1", "veil"]);
    for s in &q.settings {
        assert_eq!(s.decoder_found, 1.0, "{}", s.name);
        assert!(s.relative_error > 1.2, "{}: {}", s.name, s.relative_error);
        assert!(
            (s.random_relative_error - 2f64.sqrt()).abs() < 0.1,
            "{}: {}",
            s.name,
            s.random_relative_error
        );
        assert!(
            s.psnr <= s.psnr_domain_mean + 0.5,
            "{}: attack {} dB against the domain mean's {} dB",
            s.name,
            s.psnr,
            s.psnr_domain_mean
        );
        assert!(s.psnr > 5.0 && s.psnr < 30.0, "{}: {}", s.name, s.psnr);
    }
}

/// docs/SECURITY.md is what `veil security-cards` makes of docs/results: a card cannot claim a
/// figure the results files do not hold.
#[test]
fn security_cards_match_the_results() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want = veil_cli::security::render(&root.join("docs/results")).unwrap();
    let have = std::fs::read_to_string(root.join("docs/SECURITY.md")).unwrap();
    assert!(
        want == have,
        "docs/SECURITY.md is stale: run `cargo run --release -p veil-cli --bin veil -- security-cards`"
    );
    let page = std::fs::read_to_string(root.join("www/security.html")).unwrap();
    assert!(
        page == veil_cli::security::html_page(&have),
        "www/security.html is stale: run `cargo run --release -p veil-cli --bin veil -- security-cards`"
    );
    for id in [
        "flow-rotation",
        "owsd",
        "adversarial-data-encryption",
        "rtas",
    ] {
        assert!(page.contains(&format!("<h2 id=\"{id}\">")), "no card {id}");
    }
}
