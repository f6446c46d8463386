//! `veil experiment adversarial` on a small image folder, end to end: every table lands in
//! results.json with the sizes the search spaces imply, and bad input is refused with a message
//! that names the cause.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn veil(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn synth(root: &Path, name: &str, classes: &str) -> String {
    let dir = root.join(name);
    let out = veil(
        &[
            "data-synth",
            "--classes",
            classes,
            "--per-class",
            "30",
            "--size",
            "8",
            "--channels",
            "1",
            "--seed",
            "3",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_str().unwrap().to_owned()
}

#[test]
fn quick_adversarial_experiment_writes_every_table_and_refuses_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let folder = synth(root.path(), "six", "6");
    let common = [
        "--data",
        &folder,
        "--size",
        "8",
        "--channels",
        "1",
        "--quick",
    ];
    let out_dir = root.path().join("run");
    let mut args = vec!["experiment", "adversarial"];
    args.extend(common);
    args.extend(["--epsilon", "1.5", "--iterations", "5"]);
    let out = veil(&args, &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(r["classes"], 6);
    assert_eq!(num(&r["pgd"]["epsilon"]), 1.5);
    // Every perturbation is inside the 1.5-ball: PSNR ≥ 10·log10(64 / 1.5²) = 14.5 dB.
    assert!(
        num(&r["distortion"]["basic"]["psnr_min"]) >= 14.5 - 1e-3,
        "{}",
        r["distortion"]
    );
    for arch in ["cnn", "resnet", "mlp"] {
        for col in ["clean", "enc", "orig", "orig_p", "r_orig"] {
            assert!(
                (0.0..=1.0).contains(&num(&r["table1"][arch][col])),
                "{arch}.{col}"
            );
        }
    }
    // The searches are as large as the paper says: K² for P, K(K−1) per class for Horizontal
    // Concat, K(K−1)(K−2)(K−3) for Mixup And Concat's class 0.
    assert_eq!(r["table3"]["search"]["candidates_tried"], 36);
    assert_eq!(
        r["table8"]["horizontal-concat"]["classes"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        r["table8"]["horizontal-concat"]["classes"][0]["candidates"],
        30
    );
    assert_eq!(r["table8"]["mixup-concat"]["classes"][0]["candidates"], 360);
    assert_eq!(r["table5"]["by_ratio"].as_array().unwrap().len(), 6);
    assert_eq!(
        r["fights_back"]["adversarial_training"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(r["fights_back"]["preprocess"].as_array().unwrap().len(), 3);
    let sweep = r["epsilon_sweep"].as_array().unwrap();
    assert!(sweep.len() >= 2);
    assert!(
        sweep
            .windows(2)
            .all(|w| num(&w[0]["epsilon"]) < num(&w[1]["epsilon"]))
    );
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    for section in [
        "## Table 1",
        "## Table 5",
        "## Table 7",
        "## Table 3",
        "## Table 8",
        "fights back",
    ] {
        assert!(report.contains(section), "{section}");
    }
    assert!(image::open(out_dir.join("figure.png")).is_ok());

    let refused = |extra: &[&str], data: &str, want: &str| {
        let mut args = vec![
            "experiment",
            "adversarial",
            "--data",
            data,
            "--size",
            "8",
            "--channels",
            "1",
            "--quick",
        ];
        args.extend(extra);
        let out = veil(&args, &root.path().join("refused"));
        assert!(!out.status.success(), "{extra:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra:?}: {err}");
    };
    refused(
        &["--epsilon", "0"],
        &folder,
        "ε must be a positive finite number",
    );
    refused(
        &["--epsilon", "-1"],
        &folder,
        "ε must be a positive finite number",
    );
    // The demo model is for 10 classes: the wrong shape for six.
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/models/digits-cnn.bpk"
    );
    refused(&["--base-model", demo], &folder, "base model");
    let one = root.path().join("one");
    let class = one.join("only");
    std::fs::create_dir_all(&class).unwrap();
    for i in 0..4 {
        image::GrayImage::from_pixel(8, 8, image::Luma([40 * i as u8]))
            .save(class.join(format!("{i}.png")))
            .unwrap();
    }
    refused(&[], one.to_str().unwrap(), "at least 2 classes");
}
