//! The four parties of RTAS (§4): the share holders P0 and P1 ([`Party`], which implements
//! [`Arith`] so a network runs on it unchanged), the [`Dealer`] of Beaver triples, and the
//! [`Helper`] that evaluates non-linear functions on permuted reconstructions (and, in
//! RTAS-fast, runs the upper layers in the clear).
//!
//! Why this file is over 600 lines: the protocol steps of one party type (Beaver products,
//! truncation, the permuted non-linear protocol), which share its state; the dealer and the helper
//! are short.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::network::{Arith, NetworkSpec, Params, train_upper};
use super::ring::{FixedPoint, Matrix, PlainMatrix, RingMatrix};
use super::wire::{Activation, Channel, Message, Role, RtasError, Traffic, Transport, TripleKind};

/// The largest triple the dealer hands out (elements of one matrix): a malformed request cannot
/// make it allocate without bound.
pub const MAX_TRIPLE_ELEMENTS: usize = 1 << 28;

fn random_matrix(rng: &mut ChaCha20Rng, rows: usize, cols: usize, frac: u32) -> RingMatrix {
    Matrix::from_vec(
        rows,
        cols,
        frac,
        (0..rows * cols).map(|_| rng.next_u64()).collect(),
    )
}

/// Splits `x` into two uniformly masked shares: (x − r, r).
pub fn share(x: &RingMatrix, rng: &mut ChaCha20Rng) -> (RingMatrix, RingMatrix) {
    let r = random_matrix(rng, x.rows, x.cols, x.frac);
    (x.sub(&r), r)
}

/// Counters one share holder keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartyStats {
    /// Beaver triples consumed.
    pub triples: u64,
    /// Calls to the helper.
    pub helper_calls: u64,
}

/// A share holder (P0 or P1) running the protocol over a [`Channel`].
pub struct Party<T> {
    chan: Channel<T>,
    fp: FixedPoint,
    permutations: ChaCha20Rng,
    masks: ChaCha20Rng,
    stats: PartyStats,
}

impl<T: Transport> Party<T> {
    /// Sets a share holder up. P0 draws the seed of the permutations from `randomness` and sends
    /// it to P1, which receives it; `randomness` also masks P0's inputs.
    pub fn connect(
        mut chan: Channel<T>,
        fp: FixedPoint,
        mut randomness: ChaCha20Rng,
    ) -> Result<Self, RtasError> {
        let seed = match chan.role() {
            Role::P0 => {
                let mut seed = [0u8; 32];
                randomness.fill_bytes(&mut seed);
                chan.send(Role::P1, &Message::PermutationSeed(seed))?;
                seed
            }
            Role::P1 => match chan.recv(Role::P0)? {
                Message::PermutationSeed(s) => s,
                m => {
                    return Err(RtasError::Unexpected {
                        peer: Role::P0,
                        expected: "PermutationSeed",
                        got: m.name(),
                    });
                }
            },
            r => return Err(RtasError::Protocol(format!("{r} is not a share holder"))),
        };
        Ok(Self {
            chan,
            fp,
            permutations: ChaCha20Rng::from_seed(seed),
            masks: randomness,
            stats: PartyStats::default(),
        })
    }

    fn index(&self) -> u8 {
        (self.chan.role() == Role::P1) as u8
    }

    fn other(&self) -> Role {
        if self.index() == 0 {
            Role::P1
        } else {
            Role::P0
        }
    }

    /// This party's role.
    pub fn role(&self) -> Role {
        self.chan.role()
    }

    /// The fixed-point encoding.
    pub fn fixed_point(&self) -> FixedPoint {
        self.fp
    }

    /// Bytes per link so far.
    pub fn traffic(&self) -> Traffic {
        self.chan.traffic()
    }

    /// Triples and helper calls so far.
    pub fn stats(&self) -> PartyStats {
        self.stats
    }

    /// Shares a private `rows × cols` matrix of P0's: P0 passes `Some(values)` and keeps x − r,
    /// P1 passes `None` and receives r. Both get their share at scale f.
    pub fn share_private(
        &mut self,
        values: Option<&PlainMatrix>,
        rows: usize,
        cols: usize,
    ) -> Result<RingMatrix, RtasError> {
        match (self.index(), values) {
            (0, Some(x)) => {
                assert_eq!(x.shape(), (rows, cols), "shape of the shared matrix");
                let x = RingMatrix::encode(rows, cols, self.fp.frac_bits, &x.data);
                let (mine, theirs) = share(&x, &mut self.masks);
                self.chan.send(Role::P1, &Message::Share(theirs))?;
                Ok(mine)
            }
            (1, None) => self.chan.recv_share(Role::P0, rows, cols),
            _ => Err(RtasError::Protocol(
                "only P0 holds the private values it shares".into(),
            )),
        }
    }

    /// Opens `m` to P0: P1 sends its share and gets `None`; P0 gets the reals.
    pub fn reveal_to_p0(&mut self, m: &RingMatrix) -> Result<Option<PlainMatrix>, RtasError> {
        if self.index() == 1 {
            self.chan.send(Role::P0, &Message::Share(m.clone()))?;
            return Ok(None);
        }
        let theirs = self.chan.recv_share(Role::P1, m.rows, m.cols)?;
        let sum = m.add(&Matrix {
            frac: m.frac,
            ..theirs
        });
        Ok(Some(Matrix::from_vec(m.rows, m.cols, 0, sum.decode())))
    }

    fn triple(
        &mut self,
        kind: TripleKind,
    ) -> Result<(RingMatrix, RingMatrix, RingMatrix), RtasError> {
        if self.index() == 0 {
            self.chan
                .send(Role::Dealer, &Message::TripleRequest(kind))?;
        }
        self.stats.triples += 1;
        match self.chan.recv(Role::Dealer)? {
            Message::Triple { u, v, w } => Ok((u, v, w)),
            m => Err(RtasError::Unexpected {
                peer: Role::Dealer,
                expected: "Triple",
                got: m.name(),
            }),
        }
    }

    /// Opens (x − u, y − v) with the other share holder.
    fn open(
        &mut self,
        e: RingMatrix,
        f: RingMatrix,
    ) -> Result<(RingMatrix, RingMatrix), RtasError> {
        let other = self.other();
        self.chan.send(
            other,
            &Message::Opened {
                e: e.clone(),
                f: f.clone(),
            },
        )?;
        match self.chan.recv(other)? {
            Message::Opened { e: e2, f: f2 }
                if e2.shape() == e.shape() && f2.shape() == f.shape() =>
            {
                Ok((
                    e.zip_with(&e2, u64::wrapping_add),
                    f.zip_with(&f2, u64::wrapping_add),
                ))
            }
            Message::Opened { .. } => Err(RtasError::Protocol(format!(
                "{other} opened matrices of other shapes than this party"
            ))),
            m => Err(RtasError::Unexpected {
                peer: other,
                expected: "Opened",
                got: m.name(),
            }),
        }
    }

    /// A Beaver product (§4.1): with (u, v, w = u∘v) from the dealer, open e = x − u and
    /// f = y − v; then x∘y = e∘f + e∘v + u∘f + w, where only P0 adds the public e∘f.
    fn beaver(
        &mut self,
        x: &RingMatrix,
        y: &RingMatrix,
        kind: TripleKind,
        product: impl Fn(&RingMatrix, &RingMatrix) -> RingMatrix,
    ) -> Result<RingMatrix, RtasError> {
        let (u, v, w) = self.triple(kind)?;
        let (ok_u, ok_v) = match kind {
            TripleKind::Elementwise { rows, cols } => ((rows, cols), (rows, cols)),
            TripleKind::Matmul { m, k, n } => ((m, k), (k, n)),
        };
        if u.shape() != ok_u || v.shape() != ok_v {
            return Err(RtasError::Protocol(
                "the dealer sent a triple of another shape".into(),
            ));
        }
        let raw = |m: &RingMatrix| Matrix {
            frac: 0,
            ..m.clone()
        };
        let e = raw(x).zip_with(&u, u64::wrapping_sub);
        let f = raw(y).zip_with(&v, u64::wrapping_sub);
        let (e, f) = self.open(e, f)?;
        let mut z = product(&e, &v)
            .zip_with(&product(&u, &f), u64::wrapping_add)
            .zip_with(&raw(&w), u64::wrapping_add);
        if self.index() == 0 {
            z = z.zip_with(&product(&e, &f), u64::wrapping_add);
        }
        Ok(Matrix {
            frac: x.frac + y.frac,
            ..z
        })
    }

    /// Sends one share of the first layer's output to the helper (RTAS-fast, §4.2.2). Training:
    /// both parties get the public ∂L/∂Z back (P0 also sends the labels). Inference: P0 gets the
    /// helper's predicted classes, P1 nothing.
    pub fn fast_forward(
        &mut self,
        z: &RingMatrix,
        labels: Option<&[u32]>,
        train: bool,
    ) -> Result<Option<PlainMatrix>, RtasError> {
        self.stats.helper_calls += 1;
        self.chan.send(
            Role::Helper,
            &Message::FastForward {
                train,
                z: z.clone(),
                labels: labels.map(<[u32]>::to_vec).unwrap_or_default(),
            },
        )?;
        if !train && self.index() == 1 {
            return Ok(None);
        }
        match self.chan.recv(Role::Helper)? {
            Message::Public(m) => Ok(Some(Matrix::from_vec(m.rows, m.cols, 0, m.decode()))),
            m => Err(RtasError::Unexpected {
                peer: Role::Helper,
                expected: "Public",
                got: m.name(),
            }),
        }
    }

    /// `shared − public`: only P0 subtracts the public value.
    pub fn sub_public(&self, shared: &RingMatrix, public: &PlainMatrix) -> RingMatrix {
        if self.index() == 1 {
            return shared.clone();
        }
        shared.sub(&RingMatrix::encode(
            public.rows,
            public.cols,
            shared.frac,
            &public.data,
        ))
    }

    /// Share × public matrix, share-local (no triple), truncated to scale f.
    pub fn matmul_public(&self, shared: &RingMatrix, public: &PlainMatrix) -> RingMatrix {
        let p = RingMatrix::encode(public.rows, public.cols, self.fp.frac_bits, &public.data);
        shared
            .matmul_raw(&p)
            .truncate_share(self.index(), self.fp.frac_bits)
    }

    /// Tells the dealer and the helper that the protocol is over (P0 only; P1 does nothing).
    pub fn finish(&mut self) -> Result<(), RtasError> {
        if self.index() == 0 {
            self.chan.send(Role::Dealer, &Message::Done)?;
            self.chan.send(Role::Helper, &Message::Done)?;
        }
        Ok(())
    }
}

impl<T: Transport> Arith for Party<T> {
    type E = u64;

    fn matmul(&mut self, a: &RingMatrix, b: &RingMatrix) -> Result<RingMatrix, RtasError> {
        let kind = TripleKind::Matmul {
            m: a.rows,
            k: a.cols,
            n: b.cols,
        };
        self.beaver(a, b, kind, RingMatrix::matmul_raw)
    }

    fn hadamard(&mut self, a: &RingMatrix, b: &RingMatrix) -> Result<RingMatrix, RtasError> {
        let kind = TripleKind::Elementwise {
            rows: a.rows,
            cols: a.cols,
        };
        self.beaver(a, b, kind, RingMatrix::hadamard_raw)
    }

    fn truncate(&mut self, m: &RingMatrix) -> RingMatrix {
        if m.frac <= self.fp.frac_bits {
            return m.lift(self.fp.frac_bits);
        }
        m.truncate_share(self.index(), self.fp.frac_bits)
    }

    /// The permuted non-linear protocol (§4.2.1): both holders permute their shares with the
    /// same secret permutation π, the helper reconstructs π(x), computes f (and f') and re-shares
    /// it, and the holders apply π⁻¹ to their new shares.
    fn activate(
        &mut self,
        z: &RingMatrix,
        function: Activation,
        derivative: bool,
    ) -> Result<(RingMatrix, Option<RingMatrix>), RtasError> {
        let n = z.data.len();
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut self.permutations);
        let values = Matrix::from_vec(1, n, z.frac, z.permuted(&perm));
        self.stats.helper_calls += 1;
        self.chan.send(
            Role::Helper,
            &Message::Permuted {
                function,
                derivative,
                values,
            },
        )?;
        let (value, d) = match self.chan.recv(Role::Helper)? {
            Message::Activated {
                value,
                derivative: d,
            } if value.data.len() == n
                && d.as_ref().is_none_or(|d| d.data.len() == n)
                && d.is_some() == derivative =>
            {
                (value, d)
            }
            Message::Activated { .. } => {
                return Err(RtasError::Protocol(
                    "the helper answered with vectors of another length".into(),
                ));
            }
            m => {
                return Err(RtasError::Unexpected {
                    peer: Role::Helper,
                    expected: "Activated",
                    got: m.name(),
                });
            }
        };
        let back = |m: &RingMatrix| RingMatrix::unpermute(z.rows, z.cols, m.frac, &perm, &m.data);
        Ok((back(&value), d.as_ref().map(back)))
    }

    fn add(&self, a: &RingMatrix, b: &RingMatrix) -> RingMatrix {
        a.add(b)
    }

    fn sub(&self, a: &RingMatrix, b: &RingMatrix) -> RingMatrix {
        a.sub(b)
    }

    fn add_row(&self, m: &RingMatrix, row: &RingMatrix) -> RingMatrix {
        let frac = m.frac.max(row.frac);
        m.lift(frac).add_row(&row.lift(frac))
    }

    fn scale(&mut self, m: &RingMatrix, c: f64) -> RingMatrix {
        let m = self.truncate(m);
        let k = self.fp.encode(c);
        let scaled = Matrix {
            frac: m.frac + self.fp.frac_bits,
            ..m.map(|v| v.wrapping_mul(k))
        };
        self.truncate(&scaled)
    }
}

/// The dealer: answers P0's triple requests with fresh (u, v, w = u∘v) split between P0 and P1.
pub struct Dealer<T> {
    chan: Channel<T>,
    rng: ChaCha20Rng,
}

impl<T: Transport> Dealer<T> {
    /// A dealer drawing its triples from `rng`.
    pub fn new(chan: Channel<T>, rng: ChaCha20Rng) -> Self {
        Self { chan, rng }
    }

    /// Serves until P0 says [`Message::Done`]; returns the triples dealt and the traffic.
    pub fn serve(mut self) -> Result<(u64, Traffic), RtasError> {
        let mut dealt = 0;
        loop {
            let kind = match self.chan.recv(Role::P0)? {
                Message::TripleRequest(kind) => kind,
                Message::Done => return Ok((dealt, self.chan.traffic())),
                m => {
                    return Err(RtasError::Unexpected {
                        peer: Role::P0,
                        expected: "TripleRequest or Done",
                        got: m.name(),
                    });
                }
            };
            let ((ur, uc), (vr, vc)) = match kind {
                TripleKind::Elementwise { rows, cols } => ((rows, cols), (rows, cols)),
                TripleKind::Matmul { m, k, n } => ((m, k), (k, n)),
            };
            if [ur * uc, vr * vc, ur * vc]
                .iter()
                .any(|&n| n > MAX_TRIPLE_ELEMENTS)
            {
                return Err(RtasError::Protocol(format!(
                    "P0 asked for a triple of {kind:?}, beyond the dealer's {MAX_TRIPLE_ELEMENTS} elements a matrix"
                )));
            }
            let u = random_matrix(&mut self.rng, ur, uc, 0);
            let v = random_matrix(&mut self.rng, vr, vc, 0);
            let w = match kind {
                TripleKind::Elementwise { .. } => u.hadamard_raw(&v),
                TripleKind::Matmul { .. } => u.matmul_raw(&v),
            };
            let (u0, u1) = share(&u, &mut self.rng);
            let (v0, v1) = share(&v, &mut self.rng);
            let (w0, w1) = share(&w, &mut self.rng);
            self.chan.send(
                Role::P0,
                &Message::Triple {
                    u: u0,
                    v: v0,
                    w: w0,
                },
            )?;
            self.chan.send(
                Role::P1,
                &Message::Triple {
                    u: u1,
                    v: v1,
                    w: w1,
                },
            )?;
            dealt += 1;
        }
    }
}

/// What the helper saw in one call: the reconstructed, permuted vector of a non-linear call, or
/// the (unpermuted) first-layer output of an RTAS-fast step.
#[derive(Debug, Clone, Copy)]
pub struct HelperView<'a> {
    /// Index of the call, from 0.
    pub call: usize,
    /// The function asked for (`None` for an RTAS-fast step).
    pub function: Option<Activation>,
    /// The reals the helper reconstructed.
    pub values: &'a [f64],
    /// Rows and columns: (1, n) for a permuted vector, (batch, width) for RTAS-fast.
    pub shape: (usize, usize),
}

/// What the helper reports when the protocol ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HelperReport {
    /// Non-linear calls served.
    pub calls: u64,
    /// Values received beyond ±2^20, which no layer of these networks produces: the sign of a
    /// failed share truncation (see [`super::ring`]).
    pub implausible: u64,
    /// Bytes per link.
    pub traffic: Traffic,
}

/// Values beyond this magnitude count as [`HelperReport::implausible`].
pub const IMPLAUSIBLE: f64 = (1u64 << 20) as f64;

/// A callback that reads what the helper reconstructs.
pub type Observer<'o> = Box<dyn FnMut(HelperView<'_>) + Send + 'o>;

/// The helper (the paper's third party).
pub struct Helper<'o, T> {
    chan: Channel<T>,
    rng: ChaCha20Rng,
    fp: FixedPoint,
    upper: Option<(NetworkSpec, Params<f64>, f64)>,
    observer: Option<Observer<'o>>,
    report: HelperReport,
}

impl<'o, T: Transport> Helper<'o, T> {
    /// A helper re-sharing with masks from `rng`.
    pub fn new(chan: Channel<T>, fp: FixedPoint, rng: ChaCha20Rng) -> Self {
        Self {
            chan,
            rng,
            fp,
            upper: None,
            observer: None,
            report: HelperReport::default(),
        }
    }

    /// RTAS-fast: the helper holds the upper layers (1..) of `spec` in the clear, starting from
    /// `params`, and trains them with learning rate `lr`.
    pub fn with_upper_layers(mut self, spec: NetworkSpec, params: Params<f64>, lr: f64) -> Self {
        self.upper = Some((spec, params, lr));
        self
    }

    /// Calls `observer` with everything the helper reconstructs (the attacks read this).
    pub fn observe(mut self, observer: impl FnMut(HelperView<'_>) + Send + 'o) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    fn both(&mut self) -> Result<(Message, Message), RtasError> {
        let a = self.chan.recv(Role::P0)?;
        if matches!(a, Message::Done) {
            return Ok((a, Message::Done));
        }
        let b = self.chan.recv(Role::P1)?;
        Ok((a, b))
    }

    fn seen(&mut self, function: Option<Activation>, values: &[f64], shape: (usize, usize)) {
        self.report.implausible += values.iter().filter(|v| v.abs() > IMPLAUSIBLE).count() as u64;
        if let Some(o) = self.observer.as_mut() {
            o(HelperView {
                call: self.report.calls as usize,
                function,
                values,
                shape,
            });
        }
        self.report.calls += 1;
    }

    /// Serves until P0 says [`Message::Done`], and returns the upper layers it trained (RTAS-fast).
    pub fn serve(mut self) -> Result<(HelperReport, Option<Params<f64>>), RtasError> {
        loop {
            match self.both()? {
                (Message::Done, _) => {
                    self.report.traffic = self.chan.traffic();
                    return Ok((self.report, self.upper.map(|u| u.1)));
                }
                (
                    Message::Permuted {
                        function,
                        derivative,
                        values: a,
                    },
                    Message::Permuted {
                        function: f2,
                        derivative: d2,
                        values: b,
                    },
                ) => {
                    if (function, derivative, a.shape(), a.frac) != (f2, d2, b.shape(), b.frac) {
                        return Err(RtasError::Protocol(format!(
                            "P0 asked for {function:?} on {}×{} at scale {}, P1 for {f2:?} on {}×{} at scale {}",
                            a.rows, a.cols, a.frac, b.rows, b.cols, b.frac
                        )));
                    }
                    let x = a.add(&b).decode();
                    self.seen(Some(function), &x, a.shape());
                    let f = self.fp.frac_bits;
                    let (value, slope): (Vec<f64>, Vec<f64>) =
                        x.iter().map(|&v| function.eval(v)).unzip();
                    let (v0, v1) = share(&RingMatrix::encode(1, x.len(), f, &value), &mut self.rng);
                    let (d0, d1) = if derivative {
                        let (d0, d1) =
                            share(&RingMatrix::encode(1, x.len(), f, &slope), &mut self.rng);
                        (Some(d0), Some(d1))
                    } else {
                        (None, None)
                    };
                    self.chan.send(
                        Role::P0,
                        &Message::Activated {
                            value: v0,
                            derivative: d0,
                        },
                    )?;
                    self.chan.send(
                        Role::P1,
                        &Message::Activated {
                            value: v1,
                            derivative: d1,
                        },
                    )?;
                }
                (
                    Message::FastForward {
                        train,
                        z: a,
                        labels,
                    },
                    Message::FastForward {
                        train: t2, z: b, ..
                    },
                ) => {
                    if (train, a.shape(), a.frac) != (t2, b.shape(), b.frac) {
                        return Err(RtasError::Protocol(
                            "P0 and P1 sent different RTAS-fast steps".into(),
                        ));
                    }
                    let z = Matrix::from_vec(a.rows, a.cols, 0, a.add(&b).decode());
                    self.seen(None, &z.data, z.shape());
                    let Some((spec, params, lr)) = self.upper.as_mut() else {
                        return Err(RtasError::Protocol(
                            "an RTAS-fast step reached a helper without upper layers".into(),
                        ));
                    };
                    if train && labels.len() != z.rows {
                        return Err(RtasError::Protocol(format!(
                            "P0 sent {} labels for a batch of {}",
                            labels.len(),
                            z.rows
                        )));
                    }
                    let out = train_upper(spec, params, &z, train.then_some(&labels[..]), *lr)
                        .map_err(|e| RtasError::Protocol(e.to_string()))?;
                    let public =
                        RingMatrix::encode(out.rows, out.cols, self.fp.frac_bits, &out.data);
                    self.chan.send(Role::P0, &Message::Public(public.clone()))?;
                    if train {
                        self.chan.send(Role::P1, &Message::Public(public))?;
                    }
                }
                (a, b) => {
                    return Err(RtasError::Protocol(format!(
                        "P0 sent {} while P1 sent {}",
                        a.name(),
                        b.name()
                    )));
                }
            }
        }
    }
}
