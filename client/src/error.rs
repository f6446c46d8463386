//! The client's one error type, at the bottom of the crate: every module returns it, and `web`
//! turns it into a `JsError` the page shows.

use veil::crypto::keyfile::KeyFileError;
use veil::crypto::keys::KeyError;
use veil::nn::weights::ModelError;

/// Errors a page shows to its user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A key file could not be read or unlocked.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No key is loaded.
    #[error("no key is loaded: generate or import one first")]
    NoKey,
    /// The input has the wrong size or values.
    #[error("{0}")]
    BadInput(String),
    /// The device failed while computing or reading a result.
    #[error("the {backend} device failed: {message}")]
    Device {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        message: String,
    },
}
