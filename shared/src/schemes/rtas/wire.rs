//! The messages RTAS's parties exchange, their framing, and the [`Channel`] that checks every
//! frame (version, protocol-run id, per-link sequence number) and counts bytes per link.
//!
//! The protocol does no IO: a [`Transport`] moves opaque frames between roles, and the caller
//! picks it (in-process channels here, TCP in the `veil` binary). Frames are hand-encoded
//! (a fixed header, then little-endian integers) because the payload is almost entirely raw
//! `u64` vectors, which a general serializer would only wrap.
//!
//! Frame layout: `b"VRTS"`, version (u8), run id (16 bytes), sender role (u8), sequence number
//! (u64), message tag (u8), payload.
//!
//! Why this file is over 600 lines: every message type's encoding and decoding, with the checks
//! that refuse malformed, foreign, replayed and out-of-order frames, which belong together.

use std::time::Duration;

use super::ring::RingMatrix;

/// Version of the frame format; a party refuses frames of any other.
pub const PROTOCOL_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"VRTS";
const HEADER: usize = 4 + 1 + 16 + 1 + 8 + 1;

/// The four parties of RTAS (§4): two share holders, the semi-honest dealer of Beaver triples,
/// and the semi-honest helper that evaluates non-linear functions on permuted values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// The data owner, holding the first share (and the labels).
    P0,
    /// The second share holder.
    P1,
    /// The dealer of Beaver triples.
    Dealer,
    /// The helper (the paper's third party): non-linear functions on permuted values, and the
    /// upper layers in RTAS-fast.
    Helper,
}

impl Role {
    /// Every role, in index order.
    pub const ALL: [Role; 4] = [Role::P0, Role::P1, Role::Dealer, Role::Helper];

    /// 0..4.
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.get(b as usize).copied()
    }

    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::P0 => "p0",
            Role::P1 => "p1",
            Role::Dealer => "dealer",
            Role::Helper => "helper",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected p0, p1, dealer or helper"))
    }
}

/// The id of one protocol run: every frame carries it, so a frame from another run (a party
/// restarted with old peers, a replay from elsewhere) is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub [u8; 16]);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s).map_err(|e| format!("run id {s:?}: {e}"))?;
        Ok(Self(bytes.try_into().map_err(|_| {
            format!("run id {s:?}: expected 32 hex digits")
        })?))
    }
}

/// An element-wise function the helper evaluates (§4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// 1 / (1 + e⁻ˣ); derivative σ(1 − σ).
    Sigmoid,
    /// max(0, x); derivative 1[x > 0].
    Relu,
    /// eˣ (clamped at x ≤ 30), for the softmax by parts.
    Exp,
    /// 1/x, for the softmax by parts (x is a sum of exponentials, so positive).
    Reciprocal,
}

impl Activation {
    const ALL: [Activation; 4] = [
        Activation::Sigmoid,
        Activation::Relu,
        Activation::Exp,
        Activation::Reciprocal,
    ];

    /// f(x) and f'(x).
    pub fn eval(self, x: f64) -> (f64, f64) {
        match self {
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + (-x).exp());
                (s, s * (1.0 - s))
            }
            Activation::Relu => {
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
            Activation::Exp => {
                let e = x.min(30.0).exp();
                (e, e)
            }
            Activation::Reciprocal => {
                let r = 1.0 / x.max(1e-9);
                (r, -r * r)
            }
        }
    }
}

/// The shape of a Beaver triple a party asks the dealer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripleKind {
    /// u, v, w = u ⊙ v, all `rows × cols`.
    Elementwise {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// u (m×k), v (k×n), w = u·v.
    Matmul {
        /// Rows of u.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of v.
        n: usize,
    },
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// P0 → P1 at setup: the seed of the permutations both apply before the helper sees a vector.
    PermutationSeed([u8; 32]),
    /// A share of a matrix (P0 → P1 when P0 shares its data), or a share sent for a reveal.
    Share(RingMatrix),
    /// P0 → dealer: a triple of this shape.
    TripleRequest(TripleKind),
    /// Dealer → P0 and P1: one party's shares of (u, v, w).
    Triple {
        /// Share of u.
        u: RingMatrix,
        /// Share of v.
        v: RingMatrix,
        /// Share of w.
        w: RingMatrix,
    },
    /// P0 ↔ P1: this party's shares of x − u and y − v, to open them.
    Opened {
        /// Share of x − u.
        e: RingMatrix,
        /// Share of y − v.
        f: RingMatrix,
    },
    /// A party → the helper: its share of the permuted vector, and what to compute on it.
    Permuted {
        /// The function.
        function: Activation,
        /// Whether the derivative is wanted too (training).
        derivative: bool,
        /// The share, 1×n, permuted.
        values: RingMatrix,
    },
    /// The helper → a party: its shares of f and f' on the permuted vector.
    Activated {
        /// Share of f(x').
        value: RingMatrix,
        /// Share of f'(x'), when asked for.
        derivative: Option<RingMatrix>,
    },
    /// RTAS-fast: a party's share of the first layer's output (unpermuted; the helper learns it),
    /// with the batch's labels from P0 when training (empty otherwise, and from P1).
    FastForward {
        /// Whether this is a training step (the helper answers with ∂L/∂Z) or an inference.
        train: bool,
        /// The share of Z = X·W₀ + b₀.
        z: RingMatrix,
        /// Labels (P0, training only).
        labels: Vec<u32>,
    },
    /// A public matrix: ∂L/∂Z from the helper in RTAS-fast, or the helper's predictions.
    Public(RingMatrix),
    /// The protocol is over; the dealer and the helper stop serving.
    Done,
    /// P0 → P1 and the helper at the start: the public set-up of the run (JSON of
    /// [`super::run::RunSetup`]).
    Config(Vec<u8>),
}

impl Message {
    fn tag(&self) -> u8 {
        match self {
            Message::PermutationSeed(_) => 1,
            Message::Share(_) => 2,
            Message::TripleRequest(_) => 3,
            Message::Triple { .. } => 4,
            Message::Opened { .. } => 5,
            Message::Permuted { .. } => 6,
            Message::Activated { .. } => 7,
            Message::FastForward { .. } => 8,
            Message::Public(_) => 9,
            Message::Done => 10,
            Message::Config(_) => 11,
        }
    }

    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::PermutationSeed(_) => "PermutationSeed",
            Message::Share(_) => "Share",
            Message::TripleRequest(_) => "TripleRequest",
            Message::Triple { .. } => "Triple",
            Message::Opened { .. } => "Opened",
            Message::Permuted { .. } => "Permuted",
            Message::Activated { .. } => "Activated",
            Message::FastForward { .. } => "FastForward",
            Message::Public(_) => "Public",
            Message::Done => "Done",
            Message::Config(_) => "Config",
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Message::PermutationSeed(s) => out.extend_from_slice(s),
            Message::Share(m) | Message::Public(m) => put_matrix(out, m),
            Message::TripleRequest(TripleKind::Elementwise { rows, cols }) => {
                out.push(0);
                for d in [*rows, *cols] {
                    put_u32(out, d);
                }
            }
            Message::TripleRequest(TripleKind::Matmul { m, k, n }) => {
                out.push(1);
                for d in [*m, *k, *n] {
                    put_u32(out, d);
                }
            }
            Message::Triple { u, v, w } => {
                for m in [u, v, w] {
                    put_matrix(out, m);
                }
            }
            Message::Opened { e, f } => {
                put_matrix(out, e);
                put_matrix(out, f);
            }
            Message::Permuted {
                function,
                derivative,
                values,
            } => {
                out.push(*function as u8);
                out.push(*derivative as u8);
                put_matrix(out, values);
            }
            Message::Activated { value, derivative } => {
                put_matrix(out, value);
                out.push(derivative.is_some() as u8);
                if let Some(d) = derivative {
                    put_matrix(out, d);
                }
            }
            Message::FastForward { train, z, labels } => {
                out.push(*train as u8);
                put_matrix(out, z);
                put_u32(out, labels.len());
                for &l in labels {
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
            Message::Done => {}
            Message::Config(bytes) => {
                put_u32(out, bytes.len());
                out.extend_from_slice(bytes);
            }
        }
    }

    fn decode_payload(tag: u8, r: &mut Reader<'_>) -> Result<Self, String> {
        let m = match tag {
            1 => Message::PermutationSeed(r.bytes(32)?.try_into().expect("32 bytes")),
            2 => Message::Share(r.matrix()?),
            3 => Message::TripleRequest(match r.u8()? {
                0 => TripleKind::Elementwise {
                    rows: r.u32()?,
                    cols: r.u32()?,
                },
                1 => TripleKind::Matmul {
                    m: r.u32()?,
                    k: r.u32()?,
                    n: r.u32()?,
                },
                k => return Err(format!("unknown triple kind {k}")),
            }),
            4 => Message::Triple {
                u: r.matrix()?,
                v: r.matrix()?,
                w: r.matrix()?,
            },
            5 => Message::Opened {
                e: r.matrix()?,
                f: r.matrix()?,
            },
            6 => {
                let f = r.u8()?;
                let function = *Activation::ALL
                    .get(f as usize)
                    .ok_or_else(|| format!("unknown function {f}"))?;
                Message::Permuted {
                    function,
                    derivative: r.bool()?,
                    values: r.matrix()?,
                }
            }
            7 => {
                let value = r.matrix()?;
                let derivative = if r.bool()? { Some(r.matrix()?) } else { None };
                Message::Activated { value, derivative }
            }
            8 => {
                let train = r.bool()?;
                let z = r.matrix()?;
                let n = r.u32()?;
                let bytes = r.bytes(n.checked_mul(4).ok_or("label count overflows")?)?;
                let labels = bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Message::FastForward { train, z, labels }
            }
            9 => Message::Public(r.matrix()?),
            10 => Message::Done,
            11 => {
                let n = r.u32()?;
                Message::Config(r.bytes(n)?.to_vec())
            }
            t => return Err(format!("unknown message tag {t}")),
        };
        if r.rest() != 0 {
            return Err(format!("{} trailing bytes after {}", r.rest(), m.name()));
        }
        Ok(m)
    }
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&u32::try_from(v).expect("dimensions fit u32").to_le_bytes());
}

fn put_matrix(out: &mut Vec<u8>, m: &RingMatrix) {
    put_u32(out, m.rows);
    put_u32(out, m.cols);
    out.push(m.frac as u8);
    out.reserve(m.data.len() * 8);
    for &v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {n} more bytes expected, {} left",
                self.0.len()
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("flag byte {b} is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")) as usize)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn matrix(&mut self) -> Result<RingMatrix, String> {
        let (rows, cols) = (self.u32()?, self.u32()?);
        let frac = self.u8()? as u32;
        if frac > 62 {
            return Err(format!("scale of {frac} fractional bits exceeds 62"));
        }
        let n = rows
            .checked_mul(cols)
            .filter(|n| n.checked_mul(8).is_some_and(|b| b <= self.0.len()))
            .ok_or_else(|| {
                format!(
                    "a {rows}×{cols} matrix does not fit in the {} bytes left",
                    self.0.len()
                )
            })?;
        let data = (0..n).map(|_| self.u64()).collect::<Result<_, _>>()?;
        Ok(RingMatrix::from_vec(rows, cols, frac, data))
    }
    fn rest(&self) -> usize {
        self.0.len()
    }
}

/// Errors of the RTAS protocol. Each names the peer and the real cause.
#[derive(Debug, thiserror::Error)]
pub enum RtasError {
    /// No frame arrived in time: the peer is gone, stalled, or unreachable.
    #[error("{peer} sent nothing for {timeout:?} (it stopped, stalled, or cannot be reached)")]
    Timeout {
        /// The silent peer.
        peer: Role,
        /// How long this party waited.
        timeout: Duration,
    },
    /// The link to a peer closed.
    #[error("{peer} closed its connection mid-protocol")]
    Disconnected {
        /// The peer.
        peer: Role,
    },
    /// A frame that does not parse.
    #[error("malformed frame from {peer}: {reason}")]
    Malformed {
        /// The sender.
        peer: Role,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame of another protocol run.
    #[error("frame from {peer} belongs to protocol run {got}; this run is {expected}")]
    WrongRun {
        /// The sender.
        peer: Role,
        /// This run.
        expected: RunId,
        /// The frame's run.
        got: RunId,
    },
    /// A frame out of sequence: replayed, reordered or lost.
    #[error(
        "out-of-order frame from {peer}: expected sequence number {expected}, got {got} (a replay, a reordering or a lost frame)"
    )]
    OutOfOrder {
        /// The sender.
        peer: Role,
        /// The next number this party expected.
        expected: u64,
        /// The frame's number.
        got: u64,
    },
    /// A well-formed frame with the wrong message for this step of the protocol.
    #[error("protocol step expected {expected} from {peer}, got {got}")]
    Unexpected {
        /// The sender.
        peer: Role,
        /// What the step needs.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// The parties disagree (shapes, functions) or a request is invalid.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The transport failed.
    #[error("transport to {peer}: {reason}")]
    Transport {
        /// The peer.
        peer: Role,
        /// The cause.
        reason: String,
    },
}

/// Moves opaque frames between roles. Implementations: [`InMemoryTransport`] here, TCP in the
/// `veil` binary.
pub trait Transport: Send {
    /// Sends one frame to `to`.
    fn send(&mut self, to: Role, frame: Vec<u8>) -> Result<(), RtasError>;
    /// The next frame from `from`, or [`RtasError::Timeout`] / [`RtasError::Disconnected`].
    fn recv(&mut self, from: Role) -> Result<Vec<u8>, RtasError>;
}

/// Bytes on each link of one party, by peer index ([`Role::index`]); frames include headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    /// Bytes sent to each role.
    pub sent: [u64; 4],
    /// Bytes received from each role.
    pub received: [u64; 4],
}

impl Traffic {
    /// All bytes this party sent.
    pub fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }
}

/// A party's end of the protocol: frames messages with the run id and per-link sequence
/// numbers, checks every frame it receives, and counts bytes per link.
pub struct Channel<T> {
    transport: T,
    me: Role,
    run: RunId,
    next_send: [u64; 4],
    next_recv: [u64; 4],
    traffic: Traffic,
}

impl<T: Transport> Channel<T> {
    /// `me`'s channel for run `run`.
    pub fn new(transport: T, me: Role, run: RunId) -> Self {
        Self {
            transport,
            me,
            run,
            next_send: [0; 4],
            next_recv: [0; 4],
            traffic: Traffic::default(),
        }
    }

    /// This party's role.
    pub fn role(&self) -> Role {
        self.me
    }

    /// Bytes so far, per link.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The frame of `message` as this channel would send it next to `to` (tests use this to
    /// build replays).
    pub fn frame(&self, to: Role, message: &Message) -> Vec<u8> {
        encode_frame(self.run, self.me, self.next_send[to.index()], message)
    }

    /// Sends `message` to `to`.
    pub fn send(&mut self, to: Role, message: &Message) -> Result<(), RtasError> {
        let frame = self.frame(to, message);
        self.next_send[to.index()] += 1;
        self.traffic.sent[to.index()] += frame.len() as u64;
        self.transport.send(to, frame)
    }

    /// Sends bytes as they are, without framing or counting (tests forge frames with it).
    #[cfg(test)]
    pub(crate) fn send_raw(&mut self, to: Role, frame: Vec<u8>) -> Result<(), RtasError> {
        self.transport.send(to, frame)
    }

    /// The next message from `from`, checked.
    pub fn recv(&mut self, from: Role) -> Result<Message, RtasError> {
        let frame = self.transport.recv(from)?;
        self.traffic.received[from.index()] += frame.len() as u64;
        let (run, sender, seq, message) =
            decode_frame(&frame).map_err(|reason| RtasError::Malformed { peer: from, reason })?;
        if sender != from {
            return Err(RtasError::Malformed {
                peer: from,
                reason: format!("the frame says it is from {sender}"),
            });
        }
        if run != self.run {
            return Err(RtasError::WrongRun {
                peer: from,
                expected: self.run,
                got: run,
            });
        }
        let expected = self.next_recv[from.index()];
        if seq != expected {
            return Err(RtasError::OutOfOrder {
                peer: from,
                expected,
                got: seq,
            });
        }
        self.next_recv[from.index()] += 1;
        Ok(message)
    }

    /// The next message from `from`, which must be a [`Message::Share`] of this shape.
    pub fn recv_share(
        &mut self,
        from: Role,
        rows: usize,
        cols: usize,
    ) -> Result<RingMatrix, RtasError> {
        match self.recv(from)? {
            Message::Share(m) if m.shape() == (rows, cols) => Ok(m),
            Message::Share(m) => Err(RtasError::Protocol(format!(
                "{from} sent a {}×{} share where this step needs {rows}×{cols}",
                m.rows, m.cols
            ))),
            m => Err(RtasError::Unexpected {
                peer: from,
                expected: "Share",
                got: m.name(),
            }),
        }
    }
}

/// One frame's bytes.
pub fn encode_frame(run: RunId, from: Role, seq: u64, message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 64);
    out.extend_from_slice(MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&run.0);
    out.push(from as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(message.tag());
    message.encode_payload(&mut out);
    out
}

/// (run, sender, sequence number, message) of a frame.
pub fn decode_frame(frame: &[u8]) -> Result<(RunId, Role, u64, Message), String> {
    let mut r = Reader(frame);
    if r.bytes(4).ok() != Some(MAGIC.as_slice()) {
        return Err("not an RTAS frame (bad magic bytes)".into());
    }
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version}; this party speaks version {PROTOCOL_VERSION}"
        ));
    }
    let run = RunId(r.bytes(16)?.try_into().expect("16 bytes"));
    let from = r.u8()?;
    let from = Role::from_byte(from).ok_or_else(|| format!("unknown sender role {from}"))?;
    let seq = r.u64()?;
    let tag = r.u8()?;
    let message = Message::decode_payload(tag, &mut r)?;
    Ok((run, from, seq, message))
}

/// Frames between the four roles of one process over std channels: the transport of tests,
/// experiments and benchmarks.
pub struct InMemoryTransport {
    me: Role,
    to: [Option<std::sync::mpsc::Sender<Vec<u8>>>; 4],
    from: [Option<std::sync::mpsc::Receiver<Vec<u8>>>; 4],
    timeout: Duration,
}

/// Four connected in-memory transports, indexed by [`Role::index`]. A receive waits at most
/// `timeout`; a dropped transport disconnects its links.
pub fn in_memory_network(timeout: Duration) -> [InMemoryTransport; 4] {
    let mut ends: [InMemoryTransport; 4] = Role::ALL.map(|me| InMemoryTransport {
        me,
        to: Default::default(),
        from: Default::default(),
        timeout,
    });
    for a in Role::ALL {
        for b in Role::ALL {
            if a != b {
                let (tx, rx) = std::sync::mpsc::channel();
                ends[a.index()].to[b.index()] = Some(tx);
                ends[b.index()].from[a.index()] = Some(rx);
            }
        }
    }
    ends
}

impl Transport for InMemoryTransport {
    fn send(&mut self, to: Role, frame: Vec<u8>) -> Result<(), RtasError> {
        let link = self.to[to.index()].as_ref().ok_or(RtasError::Transport {
            peer: to,
            reason: format!("{} has no link to itself", self.me),
        })?;
        link.send(frame)
            .map_err(|_| RtasError::Disconnected { peer: to })
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, RtasError> {
        let link = self.from[from.index()]
            .as_ref()
            .ok_or(RtasError::Transport {
                peer: from,
                reason: format!("{} has no link to itself", self.me),
            })?;
        link.recv_timeout(self.timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => RtasError::Timeout {
                peer: from,
                timeout: self.timeout,
            },
            std::sync::mpsc::RecvTimeoutError::Disconnected => {
                RtasError::Disconnected { peer: from }
            }
        })
    }
}
