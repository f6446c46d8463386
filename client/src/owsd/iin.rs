//! OWSD's internal inference network in the page (Savransky, Mateless, Katz, §3.3).

use veil::burn::tensor::activation::softmax;
use veil::burn::tensor::{Device, Tensor, TensorData};
use veil::schemes::owsd::{
    IinReport, IinTrainOptions, InternalInferenceNet, InternalInferenceNetConfig, cloud_features,
    train_internal_net,
};

use crate::error::ClientError;

/// The internal inference network (paper §3.3) in the page: trained on the owner's labelled
/// sample, `[embedding ‖ cloud probability vector]` → the owner's label. It is small, and
/// [`train_internal_net`] reads its validation accuracy synchronously, so it always runs on the
/// CPU (flex), whatever the page's device.
pub struct Iin {
    net: InternalInferenceNet,
    embedding: usize,
    cloud: usize,
    classes: Vec<String>,
}

impl Iin {
    /// Trains a network on `n` rows: `embeddings` (`[n, e]`), `cloud` (`[n, k]`), `labels`
    /// in `0..classes.len()`.
    pub fn train(
        embeddings: &[f32],
        cloud: &[f32],
        labels: &[u32],
        classes: Vec<String>,
        options: IinTrainOptions,
    ) -> Result<(Self, IinReport), ClientError> {
        let n = labels.len();
        if n < 4 {
            return Err(ClientError::BadInput(format!(
                "the internal network needs at least 4 labelled images, got {n}"
            )));
        }
        let (e, k) = widths(embeddings, cloud, n)?;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(ClientError::BadInput(format!(
                "label {bad} is not one of the {} classes",
                classes.len()
            )));
        }
        let device = Device::flex().autodiff();
        device.seed(options.seed);
        let net = InternalInferenceNetConfig::new(e, k, classes.len()).init(&device);
        let (net, report) = train_internal_net(
            net,
            &rows(embeddings, cloud, n, e, k),
            labels,
            options,
            &device,
        );
        Ok((
            Self {
                net,
                embedding: e,
                cloud: k,
                classes,
            },
            report,
        ))
    }

    /// Labels and softmax probabilities (`[n, classes]`) of new rows.
    pub fn predict(
        &self,
        embeddings: &[f32],
        cloud: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>), ClientError> {
        let n = embeddings.len() / self.embedding.max(1);
        let (e, k) = widths(embeddings, cloud, n)?;
        if (e, k) != (self.embedding, self.cloud) {
            return Err(ClientError::BadInput(format!(
                "the network was trained on {}-value embeddings and {}-value cloud vectors, not {e} and {k}",
                self.embedding, self.cloud
            )));
        }
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(rows(embeddings, cloud, n, e, k), [n, e + k]),
            &device,
        );
        let probs: Vec<f32> = softmax(self.net.forward(x), 1)
            .into_data()
            .iter::<f32>()
            .collect();
        let labels = veil::nn::train::argmax_rows(&probs, self.classes.len());
        Ok((labels, probs))
    }
}

/// The widths of `n` embeddings and cloud vectors, checked.
fn widths(embeddings: &[f32], cloud: &[f32], n: usize) -> Result<(usize, usize), ClientError> {
    if n == 0 || !embeddings.len().is_multiple_of(n) || !cloud.len().is_multiple_of(n) {
        return Err(ClientError::BadInput(format!(
            "{} embedding values and {} cloud values do not split into {n} images",
            embeddings.len(),
            cloud.len()
        )));
    }
    if embeddings.iter().chain(cloud).any(|v| !v.is_finite()) {
        return Err(ClientError::BadInput(
            "an embedding or cloud vector has a value that is not finite".into(),
        ));
    }
    Ok((embeddings.len() / n, cloud.len() / n))
}

/// `[embedding ‖ cloud features]` rows: the cloud's probabilities enter as
/// [`cloud_features`], as in `veil experiment owsd`.
fn rows(embeddings: &[f32], cloud: &[f32], n: usize, e: usize, k: usize) -> Vec<f32> {
    veil::schemes::owsd::iin_rows(embeddings, e, &cloud_features(cloud), k, n)
}
