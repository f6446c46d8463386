//! `veil experiment flow --quick` end to end: it writes a report, a figure and a results.json
//! whose figures hold the scheme's properties even in the small run.

use std::process::Command;

use serde_json::Value;

fn get(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("results.json lacks {}", path.join(".")))
}

#[test]
fn quick_flow_experiment_writes_a_consistent_report() {
    let (dir, r) = crate::run(&["experiment", "flow", "--quick"]);
    let keys = [
        "orig_orig",
        "orig_enc",
        "enc_orig",
        "enc_enc_true_class",
        "enc_enc_model_routed",
        "agnostic_enc_enc",
        "agnostic_enc_orig",
    ];
    for arch in ["cnn", "resnet"] {
        for key in keys {
            let v = get(&r, &["table1", arch, key]);
            assert!((0.0..=1.0).contains(&v), "{arch}.{key} = {v}");
        }
        // Plain training works; encrypted training works on encrypted data (route a) ...
        assert!(get(&r, &["table1", arch, "orig_orig"]) >= 0.9);
        assert!(get(&r, &["integrity_ratio", arch]) >= 0.8);
        // ... and a model trained on class-agnostic ciphertexts fails on original images. (Per-class
        // ciphertexts are not tested for this: with good flows they look like other members of
        // their class, so a model trained on them also works on originals; see docs/RESULTS.md.)
        assert!(get(&r, &["table1", arch, "agnostic_enc_orig"]) < 0.3);
        // Veil's settings (reduced temperature, cover classes): the same integrity, and a model
        // trained on per-class ciphertexts fails on original images.
        for key in keys
            .iter()
            .chain(&["cover_attack_classes_recovered", "cover_attack_enc_orig"])
        {
            let v = get(&r, &["table1_veil", arch, key]);
            assert!((0.0..=1.0).contains(&v), "veil {arch}.{key} = {v}");
        }
        assert!(get(&r, &["integrity_ratio_veil", arch]) >= 0.8);
        assert!(get(&r, &["table1_veil", arch, "enc_orig"]) < 0.3);
    }
    assert_eq!(r["veil_settings"]["cover_classes"], true);
    let pi: Vec<u64> = r["cover_permutation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(pi.iter().enumerate().all(|(i, &p)| p != i as u64), "{pi:?}");
    // The quick sweep: τ = 1 and the run's τ, each with finite bits/dim.
    let sweep = r["temperature_sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    for p in sweep {
        assert!(p["bits_per_dim_per_class"].as_f64().unwrap().is_finite());
    }
    let trained = get(&r, &["table2_bits_per_dim", "trained_on_original"]);
    let untrained = get(&r, &["table2_bits_per_dim", "untrained"]);
    assert!(
        trained < untrained - 0.3,
        "trained {trained}, untrained {untrained}"
    );
    assert!(get(&r, &["gaussianity", "agnostic_flow", "sliced_wasserstein"]) > 0.0);
    // Every ciphertext is checked: on the digits at most 1 % of the images fail to round-trip
    // (whether one does depends on the key's rotation: the quick run's flows are briefly
    // trained), each set's fraction agrees with its counts, and every failure is listed in
    // encryption-failures.json under its setting, route and split.
    let failures: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("encryption-failures.json")).unwrap(),
    )
    .unwrap();
    let failures = failures.as_array().unwrap();
    for setting in ["algorithm_1", "veil"] {
        for set in [
            "per_class_train",
            "per_class_test",
            "agnostic_train",
            "agnostic_test",
        ] {
            let fraction = get(&r, &["encryption", setting, set, "encryptable_fraction"]);
            let images = get(&r, &["encryption", setting, set, "images"]);
            let failed = get(&r, &["encryption", setting, set, "non_finite"])
                + get(&r, &["encryption", setting, set, "no_round_trip"]);
            assert!(fraction >= 0.99, "{setting} {set}: {fraction}");
            assert!((fraction - (1.0 - failed / images)).abs() < 1e-12);
            let (route, split) = set.rsplit_once('_').unwrap();
            let listed = failures
                .iter()
                .filter(|f| f["setting"] == setting && f["route"] == route && f["split"] == split)
                .count();
            assert_eq!(listed as f64, failed, "{setting} {set}");
        }
        // Route (d), label-free: the perceptron on g(c) reads the ciphertexts about as well as
        // on the original latents, and not the original latents (the secret rotation).
        let ceiling = get(&r, &["route_d", setting, "orig_orig"]);
        let d = get(&r, &["route_d", setting, "enc_enc"]);
        assert!(
            ceiling > 0.85 && d > ceiling - 0.06,
            "{setting}: {d} vs {ceiling}"
        );
        assert!(get(&r, &["route_d", setting, "enc_orig"]) < 0.3);
        // With the owner's test-time copies: measured, and the recipe recorded.
        let copies = get(&r, &["route_d", setting, "enc_enc_copies"]);
        assert!(copies > ceiling - 0.06, "{setting}: {copies} vs {ceiling}");
        assert_eq!(get(&r, &["route_d", setting, "train_copies"]), 4.0);
        assert_eq!(get(&r, &["route_d", setting, "test_copies"]), 8.0);
    }
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("## Route (d)") && report.contains("## Encryption"));
    assert!(report.contains("## Table 1") && report.contains("## Table 2"));
    let fig = image::open(dir.path().join("figure3.png")).unwrap();
    // Four rows (originals, Algorithm 1's route a and b, Veil's route a) of ten 64-pixel tiles
    // with 4-pixel gaps.
    assert_eq!((fig.width(), fig.height()), (10 * 68 + 4, 4 * 68 + 4));

    // The same run killed (SIGKILL) once a few flows are trained, then run again: it reads the
    // trained flows from its checkpoints, resumes the rest, and reports the same figures.
    let killed = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
        cmd.args(["experiment", "flow", "--quick", "--out"])
            .arg(killed.path())
            .stdout(std::process::Stdio::null());
        cmd
    };
    // (flows finished, flows stopped after an epoch) in the checkpoints: their state files, not
    // the hidden temporary files they are written through (a kill between writing one and
    // renaming it leaves a state the resumed run never sees).
    let checkpointed = || -> (usize, usize) {
        let states: Vec<String> = std::fs::read_dir(killed.path().join("checkpoints"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.ends_with(".json") && !name.starts_with('.')
                    })
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let count = |s: &str| states.iter().filter(|t| t.contains(s)).count();
        (count("\"done\":true"), count("\"done\":false"))
    };
    // Killed with three flows trained and a fourth stopped mid-training, so that the resumed run
    // reads finished flows and also continues one from its last epoch. A flow trains in a tenth
    // of a second: on a busy machine it can finish between the look and the kill, and then no
    // flow is left mid-training; the run is then started again from nothing.
    for attempt in 1.. {
        // Nobody reads the first run's log: it must not fill a pipe and block.
        let mut child = run().stderr(std::process::Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !matches!(checkpointed(), (done, 1) if done >= 3) {
            assert!(
                std::time::Instant::now() < deadline,
                "no flow was checkpointed"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it was killed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if checkpointed().1 == 1 {
            break;
        }
        assert!(
            attempt < 5,
            "no kill left a flow mid-training in {attempt} attempts"
        );
        std::fs::remove_dir_all(killed.path().join("checkpoints")).unwrap();
    }
    assert!(!killed.path().join("results.json").exists());
    let resumed = run().output().unwrap();
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{log}");
    assert!(
        log.contains("resuming: flows trained earlier are read from"),
        "{log}"
    );
    assert!(
        log.matches("trained earlier, read from its checkpoint")
            .count()
            >= 3,
        "{log}"
    );
    assert!(log.contains(": resuming after epoch "), "{log}");
    let mut again: Value =
        serde_json::from_str(&std::fs::read_to_string(killed.path().join("results.json")).unwrap())
            .unwrap();
    let mut reference = r.clone();
    for v in [&mut again, &mut reference] {
        let o = v.as_object_mut().unwrap();
        o.remove("timing_s");
        o.remove("command");
    }
    assert_eq!(
        again, reference,
        "a resumed run reports what an uninterrupted one does"
    );

    // A folder holding another run's checkpoints is refused, not mixed in.
    let other = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["experiment", "flow", "--quick", "--seed", "8", "--out"])
        .arg(killed.path())
        .output()
        .unwrap();
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("holds the flows of another run"), "{err}");
}

#[test]
fn flow_train_writes_flows_and_refuses_to_overwrite_without_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args([
                "flow",
                "train",
                "--epochs",
                "2",
                "--steps",
                "2",
                "--hidden",
                "16",
                "--agnostic-only",
                "--out",
            ])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("flows.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["flows"][0]["name"], "agnostic");
    // Off a terminal (stderr is a pipe here) progress comes as a line per epoch, with time left.
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(
        log.contains("flow agnostic: epoch 1/2") && log.contains("left"),
        "{log}"
    );
    assert!(log.contains("flow agnostic: epoch 2/2"), "{log}");
    // The held-out images were encrypted and decrypted back under a throwaway key.
    let encryptable = manifest["flows"][0]["held_out_encryptable"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&encryptable), "{encryptable}");
    assert!(log.contains("held-out images"), "{log}");
    // Algorithm 1 unless told otherwise.
    assert_eq!(manifest["encryption"]["temperature"], 1.0);
    assert_eq!(manifest["encryption"]["cover_classes"], false);
    let bpd = manifest["flows"][0]["held_out_bits_per_dim"]
        .as_f64()
        .unwrap();
    assert!(bpd > 0.5 && bpd < 4.09, "held-out bits/dim {bpd}");
    assert!(dir.path().join("flow-agnostic.bpk").exists());
    assert!(
        !dir.path().join("checkpoints/agnostic.bpk").exists(),
        "the checkpoint of a finished flow is removed"
    );
    for (bad, why) in [
        (&["--temperature", "0"][..], "temperature"),
        (&["--cover-classes"][..], "per-class"),
    ] {
        let other = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["flow", "train", "--agnostic-only", "--out"])
            .arg(other.path())
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
        assert!(!other.path().join("flows.json").exists());
    }
    let again = run(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = run(&["--resume"]);
    assert!(resumed.status.success());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("already trained, skipping"));
}
