//! The factory's integration tests, one binary (a module per area). `factory_resume` is a binary
//! of its own: it compares a resumed job with an uninterrupted one, and the CPU backend's random
//! generator is process-wide.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod blackbox;
mod factory;
mod leakage;
mod owners;
mod pages;
mod quotas;
mod rtas;
