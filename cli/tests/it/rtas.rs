//! RTAS end to end: the experiment's quick run (the protocol within a point of plaintext
//! training, and the helper's leak measured), the four parties as processes over TCP (the demo;
//! a party killed mid-protocol; a party of another run), and the parties in separate Linux
//! network namespaces, as on separate hosts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veil_cli::experiments::rtas::RtasResults;

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

#[test]
fn rtas_experiment_on_the_digits() {
    let (_dir, json) = super::run(&[
        "experiment",
        "rtas",
        "--data",
        "digits",
        "--quick",
        "--epochs",
        "8",
        "--logistic-epochs",
        "3",
        "--train",
        "1300",
    ]);
    let r: RtasResults = serde_json::from_value(json).unwrap();
    assert_eq!(r.shape, "1×8×8");
    assert_eq!(r.models.len(), 2);
    for m in &r.models {
        assert!(
            !m.baseline_failed,
            "{}: plaintext {}",
            m.model, m.plaintext_accuracy
        );
        // Chance is 90 % for "is it a 0", 10 % for the class.
        assert!(
            m.plaintext_accuracy > 0.9 * m.chance + 0.1,
            "{}: {}",
            m.model,
            m.plaintext_accuracy
        );
        for p in [&m.rtas, &m.rtas_fast] {
            assert!(
                p.gap_points.abs() <= 1.0,
                "{}: {} points from plaintext",
                m.model,
                p.gap_points
            );
            assert_eq!(p.implausible_values, 0);
            assert!(p.train_mb_per_batch > 0.0 && p.inference_kb_per_image > 0.0);
            // Every link that carries the protocol carried bytes; the dealer hears only requests.
            let bytes = |from: &str, to: &str| {
                p.links
                    .iter()
                    .find(|l| l.from == from && l.to == to)
                    .unwrap()
                    .train_bytes
            };
            assert!(
                bytes("p0", "p1") > 0 && bytes("p0", "helper") > 0 && bytes("helper", "p1") > 0
            );
        }
        // RTAS-fast sends no triples; RTAS sends the most bytes.
        assert!(m.rtas.train_mb_per_batch > m.rtas_fast.train_mb_per_batch);
    }
    let h = &r.helper;
    // The permutation hides the order, not the multiset: the class of an image shows through.
    assert!(
        h.rtas_class_accuracy > h.chance + 0.08,
        "{} vs chance {}",
        h.rtas_class_accuracy,
        h.chance
    );
    // RTAS-fast reveals a linear map of the image: d + 1 known pairs invert it.
    assert!(h.fast_inversion_psnr > 40.0, "{}", h.fast_inversion_psnr);
    assert!(h.fast_class_accuracy > 0.6);
}

fn lines(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_demo_runs_four_processes_over_tcp() {
    let out = veil()
        .args([
            "rtas", "demo", "--data", "digits", "--model", "logistic", "--epochs", "3",
        ])
        .args(["--train", "1300", "--test", "200", "--timeout", "20"])
        .output()
        .unwrap();
    let text = lines(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for role in ["p0", "p1", "dealer", "helper"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{role}: sent"))),
            "{stdout}"
        );
    }
    let accuracy: f64 = stdout
        .split("test accuracy ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(accuracy > 93.0, "{accuracy}");
}

/// Four `veil party` processes on loopback (or at `hosts`, through `prefix`, e.g. `ip netns
/// exec NS`), with P1 from another run when `p1_run` differs.
struct Parties {
    children: Vec<(&'static str, Child)>,
}

impl Parties {
    fn start(
        hosts: [&str; 4],
        port: u16,
        run: &str,
        p1_run: &str,
        prefix: &dyn Fn(usize) -> Vec<String>,
        owner: &[&str],
    ) -> Self {
        let roles = ["p0", "p1", "dealer", "helper"];
        let addr = |i: usize| format!("{}:{}", hosts[i], port + i as u16);
        let mut children = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let peers: Vec<String> = (0..4)
                .filter(|&j| j != i)
                .map(|j| format!("{}={}", roles[j], addr(j)))
                .collect();
            let mut argv = prefix(i);
            argv.push(env!("CARGO_BIN_EXE_veil").into());
            argv.extend(["party", "--role", role, "--listen"].map(String::from));
            argv.push(addr(i));
            argv.push("--peers".into());
            argv.push(peers.join(","));
            argv.extend(
                ["--run", if i == 1 { p1_run } else { run }, "--timeout", "5"].map(String::from),
            );
            if i == 0 {
                argv.extend(owner.iter().map(|s| s.to_string()));
            }
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            children.push((*role, child));
        }
        Self { children }
    }

    /// Waits for every party (at most `limit`), returning (role, success, stdout and stderr,
    /// stdout).
    fn wait(self, limit: Duration) -> Vec<(&'static str, bool, String, String)> {
        let started = Instant::now();
        self.children
            .into_iter()
            .map(|(role, mut child)| {
                while child.try_wait().unwrap().is_none() {
                    if started.elapsed() > limit {
                        let _ = child.kill();
                        panic!("{role} still running after {limit:?}: a hang");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let out = child.wait_with_output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                (role, out.status.success(), lines(&out), stdout)
            })
            .collect()
    }
}

fn free_port_block() -> u16 {
    // Four consecutive ports from a base the OS just handed out (retry on a clash).
    for _ in 0..20 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 60000
            && (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no four free consecutive ports");
}

const OWNER: &[&str] = &[
    "--data", "digits", "--model", "cnn", "--epochs", "20", "--train", "1300",
];

#[test]
fn a_party_killed_mid_protocol_fails_every_other_party_within_the_timeout() {
    let port = free_port_block();
    let run = "11111111111111111111111111111111";
    let none = |_| vec![];
    let mut parties = Parties::start(["127.0.0.1"; 4], port, run, run, &none, OWNER);
    // Wait until P1 has connected and the run is under way, then kill it.
    let p1 = &mut parties.children[1].1;
    let mut err = BufReader::new(p1.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("connected to its peers") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "p1 ended before connecting"
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    p1.kill().unwrap();
    let started = Instant::now();
    let results = parties.wait(Duration::from_secs(40));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    for (role, ok, text, _) in results {
        if role == "p1" {
            continue;
        }
        assert!(!ok, "{role} succeeded without p1: {text}");
        assert!(
            text.contains("closed its connection") || text.contains("sent nothing"),
            "{role}: {text}"
        );
    }
}

#[test]
fn a_party_of_another_run_is_refused_by_name() {
    let port = free_port_block();
    let none = |_| vec![];
    let parties = Parties::start(
        ["127.0.0.1"; 4],
        port,
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
        &none,
        OWNER,
    );
    let results = parties.wait(Duration::from_secs(40));
    let p0 = &results[0];
    assert!(!p0.1);
    assert!(
        p0.2.contains("belongs to protocol run 33333333333333333333333333333333; this run is 22222222222222222222222222222222"),
        "{}",
        p0.2
    );
}

/// Namespaces, veth pairs and a bridge made for one test and removed after it.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn namespaces(tag: &str) -> Result<Namespaces, String> {
    let hub = format!("veil-{tag}-hub");
    let mut ns = Namespaces { names: vec![] };
    ip(&["netns", "add", &hub])?;
    ns.names.push(hub.clone());
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    for i in 0..4 {
        let name = format!("veil-{tag}-{i}");
        ip(&["netns", "add", &name])?;
        ns.names.push(name.clone());
        let (a, b) = (format!("v{tag}a{i}"), format!("v{tag}b{i}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &name])?;
        ip(&["link", "set", &b, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &b, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &b, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("10.231.{}.{}/24", tag.len(), i + 1),
            "dev",
            &a,
        ])?;
        ip(&["-n", &name, "link", "set", &a, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
    }
    Ok(ns)
}

#[test]
fn the_parties_run_in_separate_network_namespaces() {
    let tag = format!("{}", std::process::id() % 10000);
    let ns = match namespaces(&tag) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: cannot create network namespaces here ({e})");
            return;
        }
    };
    let hosts: Vec<String> = (1..=4)
        .map(|i| format!("10.231.{}.{i}", tag.len()))
        .collect();
    let hosts: [&str; 4] = [&hosts[0], &hosts[1], &hosts[2], &hosts[3]];
    let names = ns.names.clone();
    let prefix = move |i: usize| -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            names[i + 1].clone(),
        ]
    };
    let run = "44444444444444444444444444444444";
    let owner = [
        "--data", "digits", "--model", "logistic", "--epochs", "3", "--train", "1300", "--test",
        "200",
    ];
    let results =
        Parties::start(hosts, 7100, run, run, &prefix, &owner).wait(Duration::from_secs(60));
    for (role, ok, text, _) in &results {
        assert!(ok, "{role}: {text}");
    }
    let p0: serde_json::Value = serde_json::from_str(&results[0].3).unwrap();
    assert!(p0["accuracy"].as_f64().unwrap() > 0.93, "{p0}");
    // Bytes crossed the veth links: P0 sent to P1 over the bridge.
    assert!(p0["sent"][1].as_u64().unwrap() > 100_000, "{p0}");
    drop(ns);
}
