//! Typed ids of the factory's objects. The factory makes every id itself ([`DatasetId::fresh`]
//! and its siblings: a prefix and 16 random hex digits); an id that comes from a client is
//! checked once, where it enters ([`DatasetId::parse`], serde, or the [`IdPath`] extractor), so
//! no unchecked string ever reaches a path on disk or a query.

use std::fmt;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::{Deserialize, Deserializer, Serialize};

use crate::AppError;

/// A fresh id: `prefix` and 16 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    // getrandom fails only where the OS has no randomness source; ids then still differ by time.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        .to_le_bytes();
    }
    format!("{prefix}-{}", hex::encode(bytes))
}

/// Whether `id` has the form [`new_id`] gives with `prefix`.
pub fn valid_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A string that is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {given:?}")]
pub struct NotAnId {
    /// `dataset`, `job` or `model`.
    pub what: &'static str,
    /// What was given.
    pub given: String,
}

impl From<NotAnId> for AppError {
    /// An id that cannot exist is answered like one that does not: 404, never a hint.
    fn from(e: NotAnId) -> Self {
        AppError::NotFound(e.to_string())
    }
}

/// An id type of the factory.
pub trait TypedId: Sized {
    /// Its prefix (`ds`, `job`, `mdl`).
    const PREFIX: &'static str;
    /// What it names, for messages.
    const WHAT: &'static str;
    /// Checks `s`.
    fn parse(s: &str) -> Result<Self, NotAnId>;
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn fresh() -> Self {
                Self(new_id($prefix))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TypedId for $name {
            const PREFIX: &'static str = $prefix;
            const WHAT: &'static str = $what;

            fn parse(s: &str) -> Result<Self, NotAnId> {
                if valid_id(s, $prefix) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(NotAnId { what: $what, given: s.to_owned() })
                }
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <Self as TypedId>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// A dataset's id (`ds-` and 16 hex digits).
    DatasetId,
    "ds",
    "dataset"
);
typed_id!(
    /// A training job's id (`job-` and 16 hex digits).
    JobId,
    "job",
    "job"
);
typed_id!(
    /// A trained model's id (`mdl-` and 16 hex digits).
    ModelId,
    "mdl",
    "model"
);

/// A path parameter that must be an id of kind `T`: anything else is answered 404, like an id
/// that does not exist.
pub struct IdPath<T>(pub T);

impl<S: Send + Sync, T: TypedId> FromRequestParts<S> for IdPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::NotFound(T::WHAT.to_owned()))?;
        Ok(IdPath(T::parse(&raw)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_where_they_enter() {
        let id = DatasetId::fresh();
        assert!(valid_id(&id, "ds"));
        assert_eq!(DatasetId::parse(&id).unwrap(), id);
        assert!(JobId::parse(&id).is_err(), "a dataset id is not a job id");
        assert!(DatasetId::parse("ds-../../etc/passwd").is_err());
        assert!(DatasetId::parse("ds-0123456789abcdeg").is_err());
        assert_ne!(DatasetId::fresh(), DatasetId::fresh());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<DatasetId>(&json).unwrap(), id);
        let err = serde_json::from_str::<ModelId>("\"mdl-nope\"").unwrap_err();
        assert!(err.to_string().contains("model"), "{err}");
    }
}
