//! The `veil` binary's integration tests, one binary (a module per area): data sources, the
//! experiments' quick runs, and `veil serve` as a process.

mod datasets;
mod experiment_adversarial;
mod experiment_black_box;
mod experiment_data;
mod experiment_flow;
mod experiment_flow_attacks;
mod experiment_leakage;
mod rtas;
mod serve;

/// Runs `veil ARGS --out TMP`, checks that it succeeded, and returns the folder and its
/// results.json.
pub fn run(args: &[&str]) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    (dir, r)
}
