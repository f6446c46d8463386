//! RTAS on the server: the parties' TCP transport (used by `veil party` too) and the teaching
//! lab, whose parties the server starts on loopback.

pub mod lab;
pub mod tcp;
