//! `veil experiment leakage` and `veil experiment owsd` in small runs, end to end: they write
//! their reports and a results.json whose figures hold the properties the full runs report.

use std::process::Command;

use serde_json::Value;

use crate::run;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn quick_leakage_experiment_leaks_plaintext_but_only_ciphertext_when_encrypted() {
    let (dir, r) = run(&[
        "experiment",
        "leakage",
        "--quick",
        "--images",
        "8",
        "--compare",
        "2",
        "--iterations",
        "150",
    ]);
    let plain = &r["leak"]["plain"];
    assert_eq!(num(&plain["images"]), 8.0);
    assert!(num(&plain["mean_psnr_vs_input"]) >= 25.0, "{plain}");
    assert_eq!(num(&plain["label_accuracy"]), 1.0);
    for case in ["encrypted_a", "encrypted_b"] {
        let c = &r["leak"][case];
        assert!(num(&c["mean_psnr_vs_input"]) >= 25.0, "{case}: {c}");
        assert!(
            num(&c["mean_psnr_vs_plaintext"]) <= num(&c["mean_input_psnr_vs_plaintext"]) + 1.0,
            "{case}: {c}"
        );
    }
    assert!(num(&r["analytic_mlp"]["min_psnr"]) > 60.0);
    for (k, v) in r["classifiers"].as_object().unwrap() {
        for t in ["test_original", "test_encrypted_a", "test_encrypted_b"] {
            assert!((0.0..=1.0).contains(&num(&v[t])), "{k}.{t}");
        }
    }
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("## What the gradients leak") && report.contains("Tables 3-4"));
    assert!(image::open(dir.path().join("figure.png")).is_ok());
}

#[test]
fn quick_owsd_experiment_writes_every_table() {
    let (dir, r) = run(&["experiment", "owsd", "--data", "digits", "--quick"]);
    assert!(
        num(&r["cloud_on_unscrambled"]["top1"]) >= 0.8,
        "{}",
        r["cloud_on_unscrambled"]
    );
    for cloud in ["matching", "more", "disjoint"] {
        for which in ["both", "embedding", "cloud"] {
            let t1 = num(&r["table1"][cloud][which]["top1"]);
            let t5 = num(&r["table1"][cloud][which]["top5"]);
            assert!((0.0..=1.0).contains(&t1) && t1 <= t5, "{cloud}.{which}");
        }
    }
    // The IIN learns the owner's labels (chance is 10 %).
    assert!(num(&r["table1"]["matching"]["both"]["top1"]) > 0.4);
    let t5 = &r["table5"];
    assert!(num(&t5["entropy_bits_scrambled"]) <= num(&t5["entropy_bits_uniform"]) + 1e-9);
    let attack = r["attack"].as_array().unwrap();
    assert!(attack.len() >= 2);
    assert!(r["use_case_5_per_class"].as_array().unwrap().len() >= 3);
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("## Table 1") && report.contains("## Table 5"));
    let refused = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["experiment", "owsd", "--data", "cifar", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("digits"));
}
