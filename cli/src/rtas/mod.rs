//! RTAS's parties as processes: `veil party` runs one role over TCP, on this host or another;
//! `veil rtas demo` starts all four on loopback and reports what P0 measured.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use veil::crypto::keys::MasterKey;
use veil::schemes::rtas::run::{party_rng, run_dealer, run_helper, run_p0, run_p1, truth};
use veil::schemes::rtas::{
    Channel, FixedPoint, Mode, NetworkSpec, Role, RunConfig, RunId, Traffic,
};

use crate::datasets::{DataSource, SourceDefaults, Split, load_source};
use veil_server::rtas::tcp::{self, TcpTransport};

/// Which network P0 trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Model {
    /// Logistic regression, "is it a 0".
    Logistic,
    /// The paper's CNN.
    Cnn,
}

/// RTAS, or RTAS-fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Every layer on shares.
    Rtas,
    /// Layer 0 on shares, the rest at the helper.
    Fast,
}

/// What P0 trains on: options of `veil party --role p0` and of `veil rtas demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct OwnerArgs {
    /// P0's data: `digits`, `synthetic`, or a dataset path (an MNIST IDX folder, CIFAR-10
    /// batches, a folder of class folders).
    #[arg(long, default_value = "digits")]
    pub data: DataSource,
    /// Side length of image folders and of the synthetic set.
    #[arg(long, default_value_t = 28)]
    pub size: usize,
    /// Channels of image folders and of the synthetic set.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// The network.
    #[arg(long, value_enum, default_value = "cnn")]
    pub model: Model,
    /// RTAS or RTAS-fast.
    #[arg(long, value_enum, default_value = "rtas")]
    pub mode: ModeArg,
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Training images at most.
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Test images at most.
    #[arg(long, default_value_t = 300)]
    pub test: usize,
    /// Where P0 writes its report (JSON).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Options of `veil party`.
#[derive(clap::Args, Debug)]
pub struct PartyArgs {
    /// This party's role: p0 (the data owner), p1, dealer or helper.
    #[arg(long)]
    pub role: Role,
    /// Address to listen on for the peers that dial this party.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The other parties, as role=host:port (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(Role, SocketAddr)>,
    /// The protocol run's id, 32 hex digits, the same at every party.
    #[arg(long)]
    pub run: RunId,
    /// Seconds to wait for a peer (to start, or to answer) before giving up on it.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// P0's data and network (ignored by the other roles, which learn the public set-up from P0).
    #[command(flatten)]
    pub owner: OwnerArgs,
}

fn parse_peer(s: &str) -> Result<(Role, SocketAddr), String> {
    let (role, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected role=host:port, e.g. p1=10.0.0.2:7101"))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))?;
    Ok((role.parse()?, addr))
}

/// What a party prints (and P0 writes to `--report`) when its run ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartyReport {
    /// The role.
    pub role: Role,
    /// The run.
    pub run: String,
    /// Test accuracy (P0 only).
    pub accuracy: Option<f64>,
    /// Training batches, and their median wall time in seconds (share holders).
    pub train_batches: usize,
    /// Median wall time of a training batch.
    pub train_seconds_per_batch: f64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Bytes sent to each role (p0, p1, dealer, helper).
    pub sent: [u64; 4],
    /// Bytes received from each role.
    pub received: [u64; 4],
}

fn report(role: Role, run: RunId, started: Instant, traffic: Traffic) -> PartyReport {
    PartyReport {
        role,
        run: run.to_string(),
        accuracy: None,
        train_batches: 0,
        train_seconds_per_batch: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        sent: traffic.sent,
        received: traffic.received,
    }
}

fn config_of(owner: &OwnerArgs, shape: veil::data::ImageShape, classes: usize) -> RunConfig {
    let (spec, lr) = match owner.model {
        Model::Logistic => (
            NetworkSpec::logistic(shape),
            crate::experiments::rtas::logistic_lr(shape.len()),
        ),
        Model::Cnn => (NetworkSpec::paper_cnn(shape, classes), 1.0),
    };
    RunConfig {
        spec,
        fixed_point: FixedPoint::default(),
        lr,
        epochs: owner.epochs,
        batch_size: 32,
        inference_batch: 8192,
        init_seed: 7,
        order_seed: 8,
        positive: 0,
        mode: match owner.mode {
            ModeArg::Rtas => Mode::Rtas,
            ModeArg::Fast => Mode::RtasFast,
        },
        view_batch: None,
    }
}

/// `veil party`: one role of one run over TCP.
pub fn run_party(args: PartyArgs) -> Result<()> {
    let started = Instant::now();
    let me = args.role;
    let peers: BTreeMap<Role, SocketAddr> = args.peers.iter().copied().collect();
    for peer in Role::ALL.into_iter().filter(|&p| tcp::linked(me, p)) {
        if !peers.contains_key(&peer) {
            bail!("{me} needs the address of {peer}: add --peers {peer}=HOST:PORT");
        }
    }
    let timeout = Duration::from_secs(args.timeout.max(1));
    // Load P0's data before connecting, so a bad path fails before any peer waits on it.
    let owner_data = if me == Role::P0 {
        let o = &args.owner;
        let loaded = load_source(
            &o.data,
            Split::All,
            SourceDefaults {
                size: o.size,
                channels: o.channels,
                classes: 10,
                per_class: (o.train + o.test).div_ceil(10),
                seed: 7,
            },
        )?;
        let (train, test) = loaded.data.split(0.25, 7);
        let train = train.subset(&(0..train.len().min(o.train)).collect::<Vec<_>>());
        let test = test.subset(&(0..test.len().min(o.test)).collect::<Vec<_>>());
        if train.is_empty() || test.is_empty() {
            bail!("{} holds too few images to train and test on", o.data);
        }
        Some((train, test))
    } else {
        None
    };
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("{me} listening on {}", args.listen))?;
    eprintln!("{me}: listening on {}, run {}", args.listen, args.run);
    let transport = TcpTransport::connect(me, &listener, &peers, args.run, timeout)
        .with_context(|| format!("{me} connecting to its peers"))?;
    eprintln!("{me}: connected to its peers");
    let chan = Channel::new(transport, me, args.run);
    // Fresh randomness for this run, through the key derivation of every other scheme.
    let key = MasterKey::generate()?;
    let rng = party_rng(&key, me, args.run);
    let party = |e: veil::schemes::rtas::NetworkError| anyhow::anyhow!("{me}: {e}");
    let out = match me {
        Role::P0 => {
            let (train, test) = owner_data.as_ref().expect("loaded above");
            let config = config_of(
                &args.owner,
                train.shape,
                train.num_classes().max(test.num_classes()),
            );
            config.spec.geometry().map_err(party)?;
            let bar = crate::progress::Progress::new(
                (config.epochs * train.len() + test.len()) as u64,
                "p0",
            )
            .unit("images");
            let mut progress = crate::experiments::rtas::tracker(&bar, config.epochs);
            let o = run_p0(chan, &config, train, test, rng, &mut progress).map_err(party)?;
            bar.finish();
            let truth = truth(&config, &test.labels);
            let mut r = report(me, args.run, started, o.traffic);
            r.accuracy = Some(veil::attacks::black_box::agreement(&o.predictions, &truth));
            r.train_batches = o.train_batch_seconds.len();
            r.train_seconds_per_batch = crate::experiments::rtas::median(&o.train_batch_seconds);
            r
        }
        Role::P1 => {
            let o = run_p1(chan, rng).map_err(party)?;
            let mut r = report(me, args.run, started, o.traffic);
            r.train_batches = o.train_batch_seconds.len();
            r.train_seconds_per_batch = crate::experiments::rtas::median(&o.train_batch_seconds);
            r
        }
        Role::Dealer => report(
            me,
            args.run,
            started,
            run_dealer(chan, rng).map_err(party)?.1,
        ),
        Role::Helper => report(
            me,
            args.run,
            started,
            run_helper(chan, rng, None).map_err(party)?.traffic,
        ),
    };
    let json = serde_json::to_string_pretty(&out)?;
    if let (Role::P0, Some(path)) = (me, &args.owner.report) {
        std::fs::write(path, json.clone() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// Options of `veil rtas demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// P0's data and network.
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// Seconds a party waits for a peer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `veil rtas demo`: the four parties as processes of this binary on loopback.
pub fn run_demo(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut run = [0u8; 16];
    veil::crypto::keys::secure_random(&mut run)?;
    let run = RunId(run);
    // Free ports: bind to port 0, read the port, release it for the party.
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0")?;
            Ok(l.local_addr()?.port())
        })
        .collect::<Result<_>>()?;
    let addr = |r: Role| format!("127.0.0.1:{}", ports[r.index()]);
    let mut children = Vec::new();
    for role in Role::ALL {
        let peers: Vec<String> = Role::ALL
            .into_iter()
            .filter(|&p| p != role)
            .map(|p| format!("{p}={}", addr(p)))
            .collect();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["party", "--role", role.name(), "--listen", &addr(role)])
            .arg("--peers")
            .arg(peers.join(","))
            .args([
                "--run",
                &run.to_string(),
                "--timeout",
                &args.timeout.to_string(),
            ]);
        if role == Role::P0 {
            let o = &args.owner;
            cmd.arg("--data").arg(o.data.to_string()).args([
                "--size",
                &o.size.to_string(),
                "--channels",
                &o.channels.to_string(),
                "--epochs",
                &o.epochs.to_string(),
                "--train",
                &o.train.to_string(),
                "--test",
                &o.test.to_string(),
            ]);
            cmd.arg("--model")
                .arg(format!("{:?}", o.model).to_lowercase());
            cmd.arg("--mode").arg(match o.mode {
                ModeArg::Rtas => "rtas",
                ModeArg::Fast => "fast",
            });
            if let Some(r) = &o.report {
                cmd.arg("--report").arg(r);
            }
        }
        cmd.stdout(std::process::Stdio::piped());
        children.push((
            role,
            cmd.spawn().with_context(|| format!("starting {role}"))?,
        ));
    }
    eprintln!("rtas demo: run {run}, parties on ports {ports:?}");
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for (role, child) in children {
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {role}"))?;
        if !out.status.success() {
            failed.push(format!("{role} ({})", out.status));
            continue;
        }
        let r: PartyReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading {role}'s report"))?;
        reports.push(r);
    }
    if !failed.is_empty() {
        bail!(
            "the demo failed: {} exited with an error (see above)",
            failed.join(", ")
        );
    }
    for r in &reports {
        let sent: u64 = r.sent.iter().sum();
        let acc = r.accuracy.map_or(String::new(), |a| {
            format!(", test accuracy {:.1} %", 100.0 * a)
        });
        println!(
            "{:>6}: sent {:.2} MB (p0 {}, p1 {}, dealer {}, helper {} bytes) in {:.1} s{acc}",
            r.role.name(),
            sent as f64 / 1e6,
            r.sent[0],
            r.sent[1],
            r.sent[2],
            r.sent[3],
            r.seconds
        );
    }
    Ok(())
}
