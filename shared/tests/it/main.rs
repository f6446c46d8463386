//! `veil`'s integration tests, one binary (a module per area).

mod container_corpus;
mod demo_model;
mod encoder;
mod flow_training;
mod handwriting;
