//! RTAS frames over TCP: one connection per pair of parties that talk (every pair but the dealer
//! and the helper), a hello that names the run and the role, length-prefixed frames, a read
//! timeout, and a writer thread per link.
//!
//! Blocking sockets and threads rather than tokio: each party runs the protocol as one sequential
//! program, so an async runtime would only wrap every step in `block_on`. The writer threads are
//! what matters: both share holders send their half of an opening before reading the other's, and
//! with frames larger than the socket buffers two blocking writers would wait on each other
//! forever.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veil::schemes::rtas::wire::PROTOCOL_VERSION;
use veil::schemes::rtas::{Role, RtasError, RunId, Transport};

const HELLO: &[u8; 10] = b"VRTS-HELLO";
/// The largest frame a party accepts (a triple for an 8192-image batch is about 170 MB).
pub const MAX_FRAME: usize = 1 << 30;

/// Whether roles `a` and `b` exchange messages.
pub fn linked(a: Role, b: Role) -> bool {
    a != b
        && !matches!(
            (a, b),
            (Role::Dealer, Role::Helper) | (Role::Helper, Role::Dealer)
        )
}

struct Link {
    reader: BufReader<TcpStream>,
    writer: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

/// A party's TCP links to its peers.
pub struct TcpTransport {
    links: BTreeMap<Role, Link>,
    timeout: Duration,
}

fn hello(run: RunId, me: Role) -> Vec<u8> {
    let mut h = HELLO.to_vec();
    h.push(PROTOCOL_VERSION);
    h.extend_from_slice(&run.0);
    h.push(me as u8);
    h
}

/// Reads a hello from `stream`: the peer's role, after checking the run and the version.
fn read_hello(stream: &mut TcpStream, run: RunId, from: SocketAddr) -> Result<Role> {
    let mut buf = [0u8; HELLO.len() + 1 + 16 + 1];
    stream
        .read_exact(&mut buf)
        .with_context(|| format!("reading the hello of the connection from {from}"))?;
    if &buf[..HELLO.len()] != HELLO {
        bail!("the connection from {from} is not an RTAS party (bad hello)");
    }
    let version = buf[HELLO.len()];
    if version != PROTOCOL_VERSION {
        bail!(
            "the party at {from} speaks protocol version {version}; this one speaks {PROTOCOL_VERSION}"
        );
    }
    let theirs = RunId(
        buf[HELLO.len() + 1..HELLO.len() + 17]
            .try_into()
            .expect("16 bytes"),
    );
    if theirs != run {
        bail!("the party at {from} belongs to protocol run {theirs}; this run is {run}");
    }
    let role = buf[HELLO.len() + 17];
    Role::ALL
        .get(role as usize)
        .copied()
        .with_context(|| format!("the party at {from} claims unknown role {role}"))
}

impl TcpTransport {
    /// Connects `me` to its peers: it dials every linked peer of a lower role index (retrying
    /// until `timeout`, as they may still be starting) and accepts every linked peer of a higher
    /// one on `listener`.
    pub fn connect(
        me: Role,
        listener: &TcpListener,
        peers: &BTreeMap<Role, SocketAddr>,
        run: RunId,
        timeout: Duration,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut streams = BTreeMap::new();
        for (&peer, &addr) in peers
            .iter()
            .filter(|(p, _)| linked(me, **p) && p.index() < me.index())
        {
            let mut stream = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("{peer} at {addr} not up yet: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        bail!("{peer} at {addr} could not be reached within {timeout:?}: {e}")
                    }
                }
            };
            stream.write_all(&hello(run, me))?;
            streams.insert(peer, stream);
        }
        let expected: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|&p| linked(me, p) && p.index() > me.index())
            .collect();
        listener.set_nonblocking(true)?;
        while expected.iter().any(|p| !streams.contains_key(p)) {
            match listener.accept() {
                Ok((mut stream, from)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(timeout))?;
                    let peer = read_hello(&mut stream, run, from)?;
                    if !expected.contains(&peer) || streams.contains_key(&peer) {
                        bail!("{from} connected as {peer}, which {me} does not expect");
                    }
                    streams.insert(peer, stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = expected
                            .iter()
                            .filter(|p| !streams.contains_key(p))
                            .map(|p| p.to_string())
                            .collect();
                        bail!("{} did not connect within {timeout:?}", missing.join(", "));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).context("accepting a peer"),
            }
        }
        let mut links = BTreeMap::new();
        for (peer, stream) in streams {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            let mut out = stream.try_clone()?;
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let thread = std::thread::spawn(move || {
                for frame in rx {
                    let len = (frame.len() as u32).to_le_bytes();
                    if out
                        .write_all(&len)
                        .and_then(|_| out.write_all(&frame))
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = out.shutdown(std::net::Shutdown::Write);
            });
            links.insert(
                peer,
                Link {
                    reader: BufReader::with_capacity(1 << 20, stream),
                    writer: Some(tx),
                    thread: Some(thread),
                },
            );
        }
        Ok(Self { links, timeout })
    }

    fn link(&mut self, peer: Role) -> Result<&mut Link, RtasError> {
        self.links.get_mut(&peer).ok_or(RtasError::Transport {
            peer,
            reason: "no connection to this party".into(),
        })
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, to: Role, frame: Vec<u8>) -> Result<(), RtasError> {
        if frame.len() > MAX_FRAME {
            return Err(RtasError::Protocol(format!(
                "a frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
                frame.len()
            )));
        }
        let link = self.link(to)?;
        link.writer
            .as_ref()
            .and_then(|w| w.send(frame).ok())
            .ok_or(RtasError::Disconnected { peer: to })
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, RtasError> {
        let timeout = self.timeout;
        let link = self.link(from)?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RtasError::Timeout {
                peer: from,
                timeout,
            },
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => RtasError::Disconnected { peer: from },
            _ => RtasError::Transport {
                peer: from,
                reason: e.to_string(),
            },
        };
        let mut len = [0u8; 4];
        link.reader.read_exact(&mut len).map_err(io)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(RtasError::Malformed {
                peer: from,
                reason: format!("a frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            });
        }
        let mut frame = vec![0u8; len];
        link.reader.read_exact(&mut frame).map_err(io)?;
        Ok(frame)
    }
}

impl Drop for TcpTransport {
    /// Flushes what is queued (P0's last `Done` must reach the dealer and the helper before the
    /// process exits), within the write timeout.
    fn drop(&mut self) {
        for link in self.links.values_mut() {
            link.writer.take();
            if let Some(t) = link.thread.take() {
                let _ = t.join();
            }
        }
    }
}
