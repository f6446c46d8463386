//! Normalizing flows: Glow ([`glow`]: ActNorm, invertible 1×1 convolutions, coupling, multi-scale
//! split), its maximum-likelihood training ([`train`]), and how far its latents are from N(0, I)
//! ([`gaussianity`]). Flow rotation (`schemes::flow_rotation`) is built on them.

pub mod gaussianity;
pub mod glow;
pub mod train;
