//! Veil client.
