//! The schemes, one folder each. A scheme's folder holds everything a client or an experiment
//! needs to run it (keys drawn from the owner's master key, the transform, its inverse, the
//! owner's model); the attacks on it live in [`crate::attacks`].
//!
//! - [`flow_rotation`]: Wu, Du, Yuan, *Secure Data Sharing With Flow Model*.
//! - [`owsd`]: Savransky, Mateless, Katz, *One Way Scrambling by Deconvolution*.
//! - [`adversarial`]: Hu, Zhang, Shan, Qin, Qi, Wu, Yuan, *Adversarial Data Encryption*.
//! - [`rtas`]: *Private Machine Learning by Random Transformations* (RTAS, RTAS-fast).

pub mod adversarial;
pub mod flow_rotation;
pub mod owsd;
pub mod rtas;
