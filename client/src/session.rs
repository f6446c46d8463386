//! A client session: what a page's worker holds. The [`Context`] (device, demo model, key) and
//! one struct per scheme, each sharing the context. Plain Rust, testable natively; `web` only
//! converts types.

use std::ops::Deref;
use std::rc::Rc;

use veil::data::ImageShape;
use veil::schemes::flow_rotation::CiphertextSettings;

use crate::adversarial::Adversarial;
use crate::context::Context;
use crate::error::ClientError;
use crate::flow_rotation::FlowRotation;
use crate::owsd::Owsd;

/// A dataset container read back in the page.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContainerSummary {
    /// Images in it.
    pub count: usize,
    /// Their shape.
    pub shape: ImageShape,
    /// Class names.
    pub classes: Vec<String>,
    /// How they were made.
    pub scheme: String,
    /// The fingerprint of the key that made them.
    pub key_fingerprint: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Flow-rotation ciphertexts: the route and settings they were made with (what
    /// [`FlowRotation::decrypt`] needs).
    pub flow: Option<CiphertextSettings>,
}

/// What a page's worker holds: the shared [`Context`] and each scheme's state. It dereferences to
/// the context, so `session.generate_key(…)` and `session.classify(…)` read as before.
pub struct Session {
    ctx: Rc<Context>,
    flow_rotation: FlowRotation,
    owsd: Owsd,
    adversarial: Adversarial,
}

impl Session {
    /// Picks the device and loads the demo model (see [`Context::start`]); no scheme is set up.
    pub async fn start(prefer_gpu: bool) -> Result<Self, ClientError> {
        let ctx = Rc::new(Context::start(prefer_gpu).await?);
        Ok(Self {
            flow_rotation: FlowRotation::new(Rc::clone(&ctx)),
            owsd: Owsd::new(Rc::clone(&ctx)),
            adversarial: Adversarial::new(Rc::clone(&ctx)),
            ctx,
        })
    }

    /// Flow rotation: the loaded flows, fine-tuning, and the known-plaintext attack.
    pub fn flow_rotation(&self) -> &FlowRotation {
        &self.flow_rotation
    }

    /// OWSD: the scrambler, the imported encoders and the internal network.
    pub fn owsd(&self) -> &Owsd {
        &self.owsd
    }

    /// Adversarial data encryption: the encryptor and the base model's training.
    pub fn adversarial(&self) -> &Adversarial {
        &self.adversarial
    }

    /// Reads a dataset container (e.g. a downloaded ciphertext set): its summary, its pixels
    /// and its labels.
    pub fn read_container(
        &self,
        bytes: &[u8],
    ) -> Result<(ContainerSummary, Vec<f32>, Vec<u32>), ClientError> {
        let c = veil::data::container::decode(bytes)
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let flow = if c.meta.scheme == "flow-rotation" {
            // A container without settings predates them: read it with the loaded flows'
            // temperature and cover classes (or Algorithm 1's when none are loaded).
            let loaded = self.flow_rotation.loaded_settings();
            Some(
                CiphertextSettings::of_container(&c.meta, &loaded)
                    .map_err(ClientError::BadInput)?,
            )
        } else {
            None
        };
        let summary = ContainerSummary {
            flow,
            count: c.dataset.len(),
            shape: c.dataset.shape,
            classes: c.dataset.class_names.clone(),
            scheme: c.meta.scheme,
            key_fingerprint: c.meta.key_fingerprint,
            description: c.meta.description,
        };
        Ok((summary, c.dataset.images, c.dataset.labels))
    }
}

impl Deref for Session {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}
