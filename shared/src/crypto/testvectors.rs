//! Fixed test vectors shared by the native tests and the wasm tests in headless Chromium, so that
//! both compare against the same pinned values (and thereby against each other).

use crate::crypto::haar::HaarRotation;
use crate::crypto::keys::{MasterKey, Scheme};

/// A fixed, public, test-only master key (bytes 0, 1, 2, ..., 31).
pub fn test_key() -> MasterKey {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    MasterKey::from_bytes(b)
}

/// The 64×64 flow-rotation matrix of class 0 under [`test_key`].
pub fn haar_test_rotation() -> HaarRotation {
    HaarRotation::from_subkey(&test_key().class_subkey(Scheme::FlowRotation, 0), 64)
}

/// SHA-256 of [`haar_test_rotation`] (see [`HaarRotation::digest`]), computed natively.
pub const HAAR_DIGEST_64: &str = "631e85705ac73e42bc80bcf8b72de4cefa0305ca6340a7a89179bbaa3ce15c4c";
