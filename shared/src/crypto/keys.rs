//! Keys: a 32-byte master key, named subkeys derived with HKDF-SHA256, ChaCha RNGs seeded from
//! subkeys, and short human fingerprints.
//!
//! Every secret a scheme needs (a flow-rotation matrix per class, an OWSD scramble generator, an
//! adversarial class correspondence, ...) is derived from one master key, so a data owner backs up
//! a single key file. Derivation is domain-separated by scheme and label, so two schemes never
//! share randomness even when they use the same master key.

use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every key and subkey, in bytes.
pub const KEY_LEN: usize = 32;

/// Domain-separation prefix of every derivation; bump it only with a new key-file version.
const DOMAIN: &str = "veil/v1";

/// Errors from key generation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The platform's secure random source failed (in a browser: no `crypto.getRandomValues`).
    #[error("the system's secure random number generator failed: {0}")]
    Rng(String),
}

/// Fills `buf` from the operating system's (or the browser's) secure random source.
pub fn secure_random(buf: &mut [u8]) -> Result<(), KeyError> {
    getrandom::fill(buf).map_err(|e| KeyError::Rng(e.to_string()))
}

/// The schemes that derive secrets from a master key. Each is a separate derivation domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Flow rotation ("Secure Data Sharing With Flow Model", Wu, Du, Yuan): Haar rotations.
    FlowRotation,
    /// One-way scrambling by deconvolution (Savransky, Mateless, Katz): the generator weights.
    Owsd,
    /// Adversarial data encryption: the secret class correspondence.
    Adversarial,
    /// Random transformations + arithmetic sharing: masks and permutations.
    Rtas,
    /// Demonstrations and tests that need a keyed RNG but no scheme.
    Demo,
}

impl Scheme {
    /// The stable label used in derivations. Changing one changes every derived key.
    pub fn label(self) -> &'static str {
        match self {
            Scheme::FlowRotation => "flow-rotation",
            Scheme::Owsd => "owsd",
            Scheme::Adversarial => "adversarial",
            Scheme::Rtas => "rtas",
            Scheme::Demo => "demo",
        }
    }
}

/// A data owner's master key: 32 secret bytes. Never leaves the client.
///
/// `Debug` prints only the fingerprint; the bytes are wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// A fresh key from the secure random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        secure_random(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps existing key bytes (from a key file or a test vector).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes. Handle with care: this is the secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short, human-comparable fingerprint (see [`Fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }

    /// Derives the subkey for `scheme` and `label` with HKDF-SHA256 (RFC 5869): salt = the
    /// domain prefix, info = `veil/v1/<scheme>/<label>`.
    pub fn subkey(&self, scheme: Scheme, label: &str) -> SubKey {
        let hk = Hkdf::<Sha256>::new(Some(DOMAIN.as_bytes()), &self.0);
        let info = format!("{DOMAIN}/{}/{label}", scheme.label());
        let mut okm = [0u8; KEY_LEN];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        hk.expand(info.as_bytes(), &mut okm)
            .unwrap_or_else(|_| unreachable!("HKDF output length 32 is always valid"));
        SubKey {
            bytes: okm,
            scheme,
            label: label.to_owned(),
        }
    }

    /// The subkey of one class of a per-class scheme (e.g. flow rotation's per-class rotations).
    pub fn class_subkey(&self, scheme: Scheme, class: u32) -> SubKey {
        self.subkey(scheme, &format!("class/{class}"))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

/// A key derived from a [`MasterKey`] for one purpose.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SubKey {
    bytes: [u8; KEY_LEN],
    #[zeroize(skip)]
    scheme: Scheme,
    label: String,
}

impl SubKey {
    /// The subkey's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// What the subkey is for.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The derivation label (e.g. `class/3`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A ChaCha20 RNG seeded with the subkey: the same stream on every platform.
    pub fn rng(&self) -> ChaCha20Rng {
        ChaCha20Rng::from_seed(self.bytes)
    }

    /// The subkey's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.bytes)
    }
}

impl std::fmt::Debug for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SubKey({}/{}, {})",
            self.scheme.label(),
            self.label,
            self.fingerprint()
        )
    }
}

/// A short public identifier of a key: the first 8 bytes of SHA-256 over a domain tag and the key,
/// written as four groups of four hex digits (`3f9a-1c2e-77b0-d415`).
///
/// It identifies a key (to check that two parties hold the same one, or to label uploaded
/// ciphertext with the key that made it) without revealing anything usable about it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    fn of(key: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(format!("{DOMAIN}/fingerprint").as_bytes());
        h.update(key);
        let digest = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Self(out)
    }

    /// Parses the `xxxx-xxxx-xxxx-xxxx` form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let bytes = hex::decode(hex).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Lower-case hex of bytes (digests, test vectors).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn subkeys_are_deterministic_and_domain_separated() {
        let k = key(7);
        assert_eq!(k.subkey(Scheme::Owsd, "g"), k.subkey(Scheme::Owsd, "g"));
        assert_ne!(
            k.subkey(Scheme::Owsd, "g").as_bytes(),
            k.subkey(Scheme::FlowRotation, "g").as_bytes()
        );
        assert_ne!(
            k.class_subkey(Scheme::FlowRotation, 0).as_bytes(),
            k.class_subkey(Scheme::FlowRotation, 1).as_bytes()
        );
        assert_ne!(
            key(7).subkey(Scheme::Demo, "x").as_bytes(),
            key(8).subkey(Scheme::Demo, "x").as_bytes()
        );
    }

    #[test]
    fn hkdf_matches_a_pinned_vector() {
        // Pins the derivation: if this changes, every user's encrypted data becomes undecryptable.
        let sub = key(1).subkey(Scheme::FlowRotation, "class/0");
        assert_eq!(hex::encode(sub.as_bytes()), PINNED_FLOW_CLASS0);
    }

    const PINNED_FLOW_CLASS0: &str =
        "6beaa6d947ee627b85774f3094a566e8eb33215b2dc26f63da119ef1d954d2d3";

    #[test]
    fn rng_streams_follow_the_subkey() {
        let k = key(3);
        let a: u64 = k.subkey(Scheme::Demo, "a").rng().random();
        let a2: u64 = k.subkey(Scheme::Demo, "a").rng().random();
        let b: u64 = k.subkey(Scheme::Demo, "b").rng().random();
        assert_eq!(a, a2);
        assert_ne!(a, b);
    }

    #[test]
    fn fingerprint_round_trips_and_hides_the_key() {
        let k = MasterKey::generate().unwrap();
        let fp = k.fingerprint();
        let s = fp.to_string();
        assert_eq!(s.len(), 19);
        assert_eq!(Fingerprint::parse(&s), Some(fp));
        assert!(!format!("{k:?}").contains(&hex::encode(&k.as_bytes()[..4])));
        assert_ne!(
            k.fingerprint(),
            MasterKey::generate().unwrap().fingerprint()
        );
    }
}
