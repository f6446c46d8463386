//! Fixed test vectors shared by the native tests and the wasm tests in headless Chromium, so that
//! both compare against the same pinned values (and thereby against each other).

use crate::crypto::haar::{HaarRotation, RotationDerivation};
use crate::crypto::keys::{MasterKey, Scheme};

/// A fixed, public, test-only master key (bytes 0, 1, 2, ..., 31).
pub fn test_key() -> MasterKey {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    MasterKey::from_bytes(b)
}

/// The 64×64 flow-rotation matrix of class 0 under [`test_key`], by the QR derivation (v1).
pub fn haar_test_rotation() -> HaarRotation {
    HaarRotation::from_subkey(
        &test_key().class_subkey(Scheme::FlowRotation, 0),
        64,
        RotationDerivation::Qr,
    )
}

/// The same subkey's 64-dimensional rotation by the Householder derivation (v2).
pub fn householder_test_rotation() -> HaarRotation {
    HaarRotation::from_subkey(
        &test_key().class_subkey(Scheme::FlowRotation, 0),
        64,
        RotationDerivation::Householder,
    )
}

/// SHA-256 of [`haar_test_rotation`] (see [`HaarRotation::digest`]), computed natively.
pub const HAAR_DIGEST_64: &str = "631e85705ac73e42bc80bcf8b72de4cefa0305ca6340a7a89179bbaa3ce15c4c";

/// SHA-256 of [`householder_test_rotation`], computed natively.
pub const HOUSEHOLDER_DIGEST_64: &str =
    "d4f87c8a75b1b87c2b8655f5d27ccc7842a06a8ffd9fe35c64a82bb2e6379b45";
