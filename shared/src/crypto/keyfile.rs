//! The versioned key file: a [`MasterKey`] in JSON, plain or wrapped with a passphrase
//! (Argon2id key stretching + XChaCha20-Poly1305 authenticated encryption).
//!
//! Layout (version 1):
//! ```json
//! { "format": "veil-key", "version": 1, "name": "lab key", "fingerprint": "3f9a-1c2e-77b0-d415",
//!   "wrapping": { "kdf": "argon2id", "m_cost_kib": 19456, "t_cost": 2, "p_cost": 1,
//!                 "salt": "<base64>", "cipher": "xchacha20poly1305", "nonce": "<base64>" },
//!   "ciphertext": "<base64 of the 32 key bytes + 16-byte tag>" }
//! ```
//! A plain (unwrapped) file has `"key": "<base64>"` instead of `wrapping` and `ciphertext`.
//! The header (format, version, name, fingerprint, wrapping parameters) is the AEAD's associated
//! data, so editing any of it makes unwrapping fail rather than silently changing the file.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::keys::{KEY_LEN, KeyError, MasterKey, secure_random};

/// The `format` tag of every key file.
pub const FORMAT: &str = "veil-key";
/// The key-file version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why a key file could not be read or unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The text ends early: the file was cut off during a copy or download.
    #[error("the key file is truncated (it ends in the middle of its content)")]
    Truncated,
    /// Not JSON, or JSON that is not a key file.
    #[error("this is not a Veil key file: {0}")]
    NotAKeyFile(String),
    /// A key file from a newer (or unknown) version of Veil.
    #[error("unsupported key-file version {found} (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The version the file claims.
        found: u64,
    },
    /// A field is missing or has the wrong form.
    #[error("the key file is malformed: {0}")]
    Malformed(String),
    /// The file is wrapped and no passphrase was given.
    #[error("this key file is protected by a passphrase; enter it to unlock the key")]
    PassphraseRequired,
    /// Authentication failed: the passphrase is wrong or the file was modified.
    #[error("wrong passphrase, or the key file was modified")]
    WrongPassphraseOrTampered,
    /// The stored fingerprint does not match the key: the file was modified or corrupted.
    #[error("the key does not match the fingerprint stored in the file (modified or corrupted)")]
    FingerprintMismatch,
    /// The Argon2 parameters are outside the range this build accepts.
    #[error("unacceptable key-stretching parameters: {0}")]
    BadKdfParams(String),
    /// Random generation failed while wrapping.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Argon2id cost parameters. The defaults follow OWASP's minimum (19 MiB, 2 passes, 1 lane),
/// which takes a fraction of a second natively and about a second in a browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfCost {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        Self {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfCost {
    /// Cheap parameters for tests only: never use them for a real key.
    pub const INSECURE_FOR_TESTS: KdfCost = KdfCost {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// Largest memory cost accepted from a file (1 GiB): bounds the work a hostile file can demand.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;

    fn argon2(&self) -> Result<Argon2<'static>, KeyFileError> {
        if self.m_cost_kib > Self::MAX_M_COST_KIB || self.t_cost > 64 || self.p_cost > 16 {
            return Err(KeyFileError::BadKdfParams(format!(
                "m_cost {} KiB, t_cost {}, p_cost {} exceed the limits (1 GiB, 64, 16)",
                self.m_cost_kib, self.t_cost, self.p_cost
            )));
        }
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeyFileError::BadKdfParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// How a wrapped key is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapping {
    /// Always `argon2id` in version 1.
    pub kdf: String,
    /// Argon2id costs.
    #[serde(flatten)]
    pub cost: KdfCost,
    /// Base64 salt (16 bytes).
    pub salt: String,
    /// Always `xchacha20poly1305` in version 1.
    pub cipher: String,
    /// Base64 nonce (24 bytes).
    pub nonce: String,
}

/// A key file as stored on disk or downloaded from the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] when written by this build.
    pub version: u32,
    /// The owner's name for the key.
    pub name: String,
    /// The key's fingerprint, readable without the passphrase.
    pub fingerprint: String,
    /// Present when the key is passphrase-wrapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping: Option<Wrapping>,
    /// Base64 AEAD ciphertext of the key (wrapped files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
    /// Base64 key bytes (plain files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeyFile {
    /// An unprotected key file. Prefer [`KeyFile::wrap`] for anything stored or sent.
    pub fn plain(key: &MasterKey, name: &str) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            name: name.into(),
            fingerprint: key.fingerprint().to_string(),
            wrapping: None,
            ciphertext: None,
            key: Some(B64.encode(key.as_bytes())),
        }
    }

    /// A key file protected by `passphrase`: a fresh random salt and nonce each time.
    pub fn wrap(
        key: &MasterKey,
        name: &str,
        passphrase: &str,
        cost: KdfCost,
    ) -> Result<Self, KeyFileError> {
        if passphrase.is_empty() {
            return Err(KeyFileError::Malformed(
                "the passphrase is empty; choose one or export the key unprotected".into(),
            ));
        }
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        secure_random(&mut salt)?;
        secure_random(&mut nonce)?;
        let mut file = Self {
            format: FORMAT.into(),
            version: VERSION,
            name: name.into(),
            fingerprint: key.fingerprint().to_string(),
            wrapping: Some(Wrapping {
                kdf: "argon2id".into(),
                cost,
                salt: B64.encode(salt),
                cipher: "xchacha20poly1305".into(),
                nonce: B64.encode(nonce),
            }),
            ciphertext: None,
            key: None,
        };
        let kek = file.stretch(passphrase)?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
        let aad = file.associated_data();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| KeyFileError::Malformed("encryption failed".into()))?;
        file.ciphertext = Some(B64.encode(ct));
        Ok(file)
    }

    /// Whether unlocking needs a passphrase.
    pub fn is_wrapped(&self) -> bool {
        self.wrapping.is_some()
    }

    /// Serialises the file as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| unreachable!("plain data serialises"))
    }

    /// Parses and validates a key file, with a precise error for each way it can be wrong.
    pub fn from_json(text: &str) -> Result<Self, KeyFileError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            if e.is_eof() {
                KeyFileError::Truncated
            } else {
                KeyFileError::NotAKeyFile(format!("not valid JSON ({e})"))
            }
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| KeyFileError::NotAKeyFile("the JSON is not an object".into()))?;
        match obj.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(KeyFileError::NotAKeyFile(format!(
                    "its format is {other:?}, expected {FORMAT:?}"
                )));
            }
            None => {
                return Err(KeyFileError::NotAKeyFile(
                    "it has no \"format\" field".into(),
                ));
            }
        }
        match obj.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(found) => return Err(KeyFileError::UnsupportedVersion { found }),
            None => {
                return Err(KeyFileError::Malformed(
                    "missing or non-numeric \"version\"".into(),
                ));
            }
        }
        let file: KeyFile =
            serde_json::from_value(value).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
        match (&file.wrapping, &file.ciphertext, &file.key) {
            (Some(w), Some(_), None) => {
                if w.kdf != "argon2id" || w.cipher != "xchacha20poly1305" {
                    return Err(KeyFileError::Malformed(format!(
                        "unknown wrapping {}/{}",
                        w.kdf, w.cipher
                    )));
                }
            }
            (None, None, Some(_)) => {}
            _ => {
                return Err(KeyFileError::Malformed(
                    "a key file holds either \"key\" or \"wrapping\" with \"ciphertext\"".into(),
                ));
            }
        }
        Ok(file)
    }

    /// Recovers the master key, checking the passphrase (wrapped files) and the fingerprint.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<MasterKey, KeyFileError> {
        let bytes: Zeroizing<Vec<u8>> = match (&self.wrapping, &self.ciphertext, &self.key) {
            (None, None, Some(k)) => Zeroizing::new(decode_b64("key", k)?),
            (Some(w), Some(ct), None) => {
                let passphrase = passphrase
                    .filter(|p| !p.is_empty())
                    .ok_or(KeyFileError::PassphraseRequired)?;
                let nonce = decode_b64("nonce", &w.nonce)?;
                if nonce.len() != 24 {
                    return Err(KeyFileError::Malformed("the nonce is not 24 bytes".into()));
                }
                let ct = decode_b64("ciphertext", ct)?;
                let kek = self.stretch(passphrase)?;
                let cipher = XChaCha20Poly1305::new((&*kek).into());
                let aad = self.associated_data();
                Zeroizing::new(
                    cipher
                        .decrypt(
                            XNonce::from_slice(&nonce),
                            Payload {
                                msg: &ct,
                                aad: &aad,
                            },
                        )
                        .map_err(|_| KeyFileError::WrongPassphraseOrTampered)?,
                )
            }
            _ => {
                return Err(KeyFileError::Malformed(
                    "a key file holds either \"key\" or \"wrapping\" with \"ciphertext\"".into(),
                ));
            }
        };
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            KeyFileError::Malformed(format!(
                "the key is {} bytes, expected {KEY_LEN}",
                bytes.len()
            ))
        })?;
        let key = MasterKey::from_bytes(arr);
        if key.fingerprint().to_string() != self.fingerprint {
            return Err(KeyFileError::FingerprintMismatch);
        }
        Ok(key)
    }

    fn stretch(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let w = self
            .wrapping
            .as_ref()
            .ok_or_else(|| KeyFileError::Malformed("not a wrapped key file".into()))?;
        let salt = decode_b64("salt", &w.salt)?;
        if salt.len() < 8 {
            return Err(KeyFileError::Malformed(
                "the salt is shorter than 8 bytes".into(),
            ));
        }
        let mut out = Zeroizing::new([0u8; 32]);
        w.cost
            .argon2()?
            .hash_password_into(passphrase.as_bytes(), &salt, &mut *out)
            .map_err(|e| KeyFileError::BadKdfParams(e.to_string()))?;
        Ok(out)
    }

    /// The authenticated header: every field except the ciphertext, in a fixed order.
    fn associated_data(&self) -> Vec<u8> {
        let w = self.wrapping.as_ref();
        serde_json::to_vec(&(
            &self.format,
            self.version,
            &self.name,
            &self.fingerprint,
            w.map(|w| (&w.kdf, w.cost, &w.salt, &w.cipher, &w.nonce)),
        ))
        .unwrap_or_default()
    }
}

fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, KeyFileError> {
    B64.decode(s)
        .map_err(|e| KeyFileError::Malformed(format!("{field} is not valid base64 ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped() -> (MasterKey, String) {
        let key = MasterKey::generate().unwrap();
        let file =
            KeyFile::wrap(&key, "lab", "correct horse", KdfCost::INSECURE_FOR_TESTS).unwrap();
        (key, file.to_json())
    }

    #[test]
    fn wrapped_round_trip() {
        let (key, json) = wrapped();
        let file = KeyFile::from_json(&json).unwrap();
        assert!(file.is_wrapped());
        assert!(!json.contains(&B64.encode(key.as_bytes())));
        assert_eq!(file.unlock(Some("correct horse")).unwrap(), key);
    }

    #[test]
    fn plain_round_trip() {
        let key = MasterKey::generate().unwrap();
        let json = KeyFile::plain(&key, "k").to_json();
        assert_eq!(
            KeyFile::from_json(&json).unwrap().unlock(None).unwrap(),
            key
        );
    }

    #[test]
    fn wrong_passphrase_is_refused() {
        let (_, json) = wrapped();
        let file = KeyFile::from_json(&json).unwrap();
        assert!(matches!(
            file.unlock(Some("wrong")),
            Err(KeyFileError::WrongPassphraseOrTampered)
        ));
        assert!(matches!(
            file.unlock(None),
            Err(KeyFileError::PassphraseRequired)
        ));
    }

    #[test]
    fn truncated_file_is_reported_as_truncated() {
        let (_, json) = wrapped();
        for cut in [1, json.len() / 3, json.len() - 2] {
            assert!(
                matches!(
                    KeyFile::from_json(&json[..cut]),
                    Err(KeyFileError::Truncated)
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn tampered_header_or_ciphertext_is_refused() {
        let (_, json) = wrapped();
        let mut renamed = KeyFile::from_json(&json).unwrap();
        renamed.name = "someone else's".into();
        assert!(matches!(
            renamed.unlock(Some("correct horse")),
            Err(KeyFileError::WrongPassphraseOrTampered)
        ));
        let mut flipped = KeyFile::from_json(&json).unwrap();
        let mut ct = B64.decode(flipped.ciphertext.as_ref().unwrap()).unwrap();
        ct[3] ^= 1;
        flipped.ciphertext = Some(B64.encode(ct));
        assert!(matches!(
            flipped.unlock(Some("correct horse")),
            Err(KeyFileError::WrongPassphraseOrTampered)
        ));
        let key = MasterKey::generate().unwrap();
        let mut plain = KeyFile::plain(&key, "k");
        plain.fingerprint = MasterKey::generate().unwrap().fingerprint().to_string();
        assert!(matches!(
            plain.unlock(None),
            Err(KeyFileError::FingerprintMismatch)
        ));
    }

    #[test]
    fn unknown_version_and_foreign_json_are_named() {
        let (_, json) = wrapped();
        let v2 = json.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            KeyFile::from_json(&v2),
            Err(KeyFileError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            KeyFile::from_json("{\"hello\": 1}"),
            Err(KeyFileError::NotAKeyFile(_))
        ));
        assert!(matches!(
            KeyFile::from_json("%PNG"),
            Err(KeyFileError::NotAKeyFile(_))
        ));
        let msg = KeyFile::from_json(&v2).unwrap_err().to_string();
        assert!(msg.contains("version 2"), "{msg}");
    }

    #[test]
    fn hostile_kdf_cost_is_refused_before_work() {
        let (_, json) = wrapped();
        let mut file = KeyFile::from_json(&json).unwrap();
        file.wrapping.as_mut().unwrap().cost.m_cost_kib = u32::MAX;
        assert!(matches!(
            file.unlock(Some("correct horse")),
            Err(KeyFileError::BadKdfParams(_))
        ));
    }
}
