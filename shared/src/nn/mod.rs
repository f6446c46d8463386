//! Networks and their training: the small CNN and its model card ([`model`]), the small ResNet
//! ([`resnet`]), burnpack weights loaded and saved safely ([`weights`]), and the classifier
//! training loop with its metrics ([`train`]).

pub mod model;
pub mod resnet;
pub mod train;
pub mod weights;
