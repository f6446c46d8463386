//! Every experiment takes the user's data: `veil experiment owsd` and `veil experiment leakage`
//! on an image folder and on an MNIST IDX folder written by the test, and MNIST folders holding
//! both splits.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use veil::data::{ImageDataset, ImageShape, SyntheticConfig, encode_mnist_idx, synthetic};
use veil_cli::datasets::{Format, Split, load_split};

fn veil(args: &[&str], dirs: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
    cmd.args(args);
    for d in dirs {
        cmd.arg(d);
    }
    cmd.output().unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn results(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

/// Small synthetic shapes: 10 classes of 8×8 grey images.
fn shapes(per_class: usize, seed: u64) -> ImageDataset {
    synthetic(SyntheticConfig {
        classes: 10,
        per_class,
        shape: ImageShape::new(1, 8, 8),
        noise: 0.05,
        seed,
    })
    .unwrap()
}

fn write_idx(dir: &Path, prefix: &str, data: &ImageDataset) {
    let bytes: Vec<u8> = data
        .images
        .iter()
        .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let labels: Vec<u8> = data.labels.iter().map(|&l| l as u8).collect();
    let (img, lab) = encode_mnist_idx(&bytes, &labels, data.shape.height, data.shape.width);
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
}

#[test]
fn an_mnist_folder_with_both_splits_loads_both_or_the_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", &shapes(3, 1));
    write_idx(dir.path(), "t10k", &shapes(2, 2));
    let shape = ImageShape::new(1, 8, 8);
    let load = |split| load_split(dir.path(), Format::Auto, shape, split);
    let all = load(Split::All).unwrap();
    assert_eq!(all.len(), 50, "train (30) and t10k (20) together");
    let (train, test) = (load(Split::Train).unwrap(), load(Split::Test).unwrap());
    assert_eq!((train.len(), test.len()), (30, 20));
    // Name order puts t10k first: its images lead, then train's.
    assert_eq!(all.images, [test.images, train.images].concat());
    assert_eq!(all.labels, [test.labels, train.labels].concat());

    // Only a training pair: asking for the test split is refused, naming what is there.
    let only = tempfile::tempdir().unwrap();
    write_idx(only.path(), "train", &shapes(3, 1));
    let err = load_split(only.path(), Format::Auto, shape, Split::Test).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("--split"), "{msg}");
    // An images file without its labels is named.
    std::fs::remove_file(only.path().join("train-labels-idx1-ubyte")).unwrap();
    let err = load_split(only.path(), Format::Auto, shape, Split::All).unwrap_err();
    assert!(
        format!("{err:#}").contains("train-labels-idx1-ubyte"),
        "{err:#}"
    );
}

#[test]
fn owsd_and_leakage_run_on_an_image_folder_and_an_mnist_folder() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("folder");
    let data = shapes(24, 5);
    ok(&veil(
        &[
            "data-synth",
            "--classes",
            "10",
            "--per-class",
            "24",
            "--size",
            "8",
            "--channels",
            "1",
            "--seed",
            "5",
            "--out",
        ],
        &[&folder],
    ));
    let mnist = root.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    write_idx(&mnist, "train", &data);

    // Flows of this data for the leakage experiment's encrypted cases (one epoch: the
    // experiment needs them to exist and to invert, not to be good).
    let flows = root.path().join("flows");
    let size = ["--size", "8", "--channels", "1"];
    let mut train = vec!["flow", "train", "--data", folder.to_str().unwrap()];
    train.extend(size);
    train.extend(["--epochs", "1", "--steps", "1", "--hidden", "8", "--out"]);
    ok(&veil(&train, &[&flows]));

    for (name, source) in [("folder", &folder), ("mnist", &mnist)] {
        let src = source.to_str().unwrap();
        let out = root.path().join(format!("owsd-{name}"));
        let mut args = vec![
            "experiment",
            "owsd",
            "--quick",
            "--encoders",
            "1",
            "--data",
            src,
        ];
        args.extend(size);
        args.push("--out");
        ok(&veil(&args, &[&out]));
        let r = results(&out);
        assert_eq!(r["setup"]["data"], src, "{name}");
        assert_eq!(r["setup"]["owner_classes"], 10, "{name}");

        let out = root.path().join(format!("leakage-{name}"));
        let mut args = vec!["experiment", "leakage", "--quick", "--data", src];
        args.extend(size);
        args.extend([
            "--images",
            "4",
            "--compare",
            "1",
            "--iterations",
            "60",
            "--flows",
            flows.to_str().unwrap(),
            "--out",
        ]);
        ok(&veil(&args, &[&out]));
        let r = results(&out);
        assert_eq!(r["setup"]["data"], src, "{name}");
        assert_eq!(r["setup"]["flows"], flows.to_str().unwrap(), "{name}");
        assert_eq!(r["leak"]["plain"]["images"], 4, "{name}");
    }

    // Other data without flows is refused before any work, saying how to make them.
    let out = root.path().join("no-flows");
    let mut args = vec![
        "experiment",
        "leakage",
        "--quick",
        "--data",
        folder.to_str().unwrap(),
    ];
    args.push("--out");
    let refused = veil(&args, &[&out]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("veil flow train"), "{err}");
}
