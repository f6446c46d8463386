//! Key material: master keys and HKDF subkeys ([`keys`]), passphrase-wrapped key files
//! ([`keyfile`]), Haar-random rotations drawn from a key ([`haar`]) with
//! bit-identical Gaussians ([`gaussian`]), and the pinned test vectors
//! that keep every derivation bit-identical on every host ([`testvectors`]).

pub mod gaussian;
pub mod haar;
pub mod keyfile;
pub mod keys;
pub mod testvectors;
