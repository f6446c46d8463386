//! Device choice (WebGPU when the browser has it, the flex CPU backend otherwise) and reading
//! tensors back, and checking a batch of pixels before it goes to the device. At the bottom of the crate with `error`: it imports no other module.

use std::collections::VecDeque;

use veil::burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use veil::burn::tensor::{Device, Tensor, TensorData};
use veil::data::ImageShape;

use crate::error::ClientError;

/// Which backend runs the tensors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// WebGPU through burn-wgpu.
    Webgpu,
    /// burn's flex CPU backend (WebAssembly in the page, native elsewhere).
    Cpu {
        /// Why the GPU is not used (no WebGPU in this browser, no adapter, or not asked for).
        reason: String,
    },
}

impl Backend {
    /// A short label for the page (`webgpu` or `cpu`).
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Webgpu => "webgpu",
            Backend::Cpu { .. } => "cpu",
        }
    }
}

/// Picks the device: WebGPU when `prefer_gpu` and the browser offers an adapter, else the CPU.
///
/// In the browser the WebGPU runtime must be initialised asynchronously before any tensor exists
/// (`init_async`); when there is no adapter it returns an error and we fall back to flex.
pub async fn init_device(prefer_gpu: bool) -> (Device, Backend) {
    if !prefer_gpu {
        return (
            Device::flex(),
            Backend::Cpu {
                reason: "the CPU was requested".into(),
            },
        );
    }
    #[cfg(target_arch = "wasm32")]
    {
        use veil::burn::tensor::wgpu::WgpuBackend;
        if !has_webgpu() {
            return (
                Device::flex(),
                Backend::Cpu {
                    reason: "this browser does not offer WebGPU".into(),
                },
            );
        }
        match Device::wgpu_options()
            .graphics_api(WgpuBackend::WebGpu)
            .init_async()
            .await
        {
            Ok(device) => (device, Backend::Webgpu),
            Err(e) => {
                let detail = e.to_string();
                let reason = if detail.contains("No adapter") || detail.contains("no adapters") {
                    "this browser has WebGPU but no usable GPU adapter".to_owned()
                } else {
                    format!("WebGPU could not start: {detail}")
                };
                (Device::flex(), Backend::Cpu { reason })
            }
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        (
            Device::flex(),
            Backend::Cpu {
                reason: "native builds of the client use the CPU".into(),
            },
        )
    }
}

/// Reads a tensor back asynchronously (the only way WebGPU allows).
pub async fn read_vec<const D: usize>(
    t: Tensor<D>,
    backend: &'static str,
) -> Result<Vec<f32>, ClientError> {
    let data = t.into_data_async().await.map_err(|e| ClientError::Device {
        backend,
        message: format!("{e:?}"),
    })?;
    Ok(data.iter::<f32>().collect())
}

/// Whether the global scope (window or worker) offers `navigator.gpu`. Uses `js_sys::Reflect`
/// rather than web-sys's `Navigator::gpu`, which needs `--cfg web_sys_unstable_apis`.
#[cfg(target_arch = "wasm32")]
fn has_webgpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

/// Copies the float parameters of `trained` (on any device) onto `base`, a flex module of the same
/// architecture, reading them asynchronously; `base` keeps its non-trainable constants (a flow's
/// 1×1 convolutions' permutations and signs), which training never changes. Written by hand
/// because burn 0.22's record export reads tensors synchronously, which panics on WebGPU.
pub async fn params_to_flex<M: Module>(
    trained: &M,
    base: M,
    backend: &'static str,
) -> Result<M, ClientError> {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().flatten::<1>(0, D - 1));
        }
    }
    struct Replace(VecDeque<Vec<f32>>, Option<String>);
    impl ModuleMapper for Replace {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let shape = t.dims();
                match self.0.pop_front() {
                    Some(v) if v.len() == shape.iter().product::<usize>() => {
                        Tensor::from_data(TensorData::new(v, shape), &t.device())
                    }
                    _ => {
                        self.1.get_or_insert_with(|| {
                            format!("a parameter of shape {shape:?} does not match")
                        });
                        t
                    }
                }
            })
        }
    }
    let mut collect = Collect(Vec::new());
    trained.visit(&mut collect);
    let mut values = VecDeque::with_capacity(collect.0.len());
    for t in collect.0 {
        values.push_back(read_vec(t, backend).await?);
    }
    let mut replace = Replace(values, None);
    let flex = base.map(&mut replace);
    match replace.1 {
        Some(e) => Err(ClientError::BadInput(format!(
            "the trained weights cannot be copied: {e}"
        ))),
        None if !replace.0.is_empty() => Err(ClientError::BadInput(
            "the trained model has more parameters than its configuration".into(),
        )),
        None => Ok(flex),
    }
}

/// Checks that `pixels` is a whole, non-empty number of finite `shape` images; their count.
pub fn check_batch(pixels: &[f32], shape: ImageShape) -> Result<usize, ClientError> {
    if pixels.is_empty() || !pixels.len().is_multiple_of(shape.len()) {
        return Err(ClientError::BadInput(format!(
            "expected a whole number of {shape} images ({} values each), got {} values",
            shape.len(),
            pixels.len()
        )));
    }
    if let Some(i) = pixels.iter().position(|p| !p.is_finite()) {
        return Err(ClientError::BadInput(format!(
            "image {} has a value that is not finite",
            i / shape.len()
        )));
    }
    Ok(pixels.len() / shape.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_batch_names_the_problem() {
        let shape = ImageShape::new(1, 2, 2);
        assert_eq!(check_batch(&[0.0; 8], shape).unwrap(), 2);
        assert!(
            check_batch(&[0.0; 7], shape)
                .unwrap_err()
                .to_string()
                .contains("whole number")
        );
        let mut px = [0.0; 8];
        px[5] = f32::NAN;
        assert!(
            check_batch(&px, shape)
                .unwrap_err()
                .to_string()
                .contains("image 1")
        );
    }
}
