//! The `veil` binary's integration tests, one binary (a module per area): data sources, the
//! experiments' quick runs, and `veil serve` as a process.

mod datasets;
mod experiment_data;
mod experiment_flow;
mod experiment_leakage;
mod serve;
