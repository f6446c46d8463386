//! Networks and their training: the small CNN and its model card ([`model`]), the small ResNet
//! ([`resnet`]), a perceptron of images ([`mlp`]), a perceptron of flow latents ([`latent`]), burnpack weights loaded and saved safely ([`weights`]), and the classifier
//! training loop with its metrics ([`train`]).

pub mod latent;
pub mod mlp;
pub mod model;
pub mod resnet;
pub mod train;
pub mod weights;
