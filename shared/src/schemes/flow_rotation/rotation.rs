//! A secret rotation on a burn device: the form in which flow rotation applies `A` to a batch of
//! latents.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::crypto::haar::HaarRotation;

/// A rotation on a burn device, ready to rotate a batch of row vectors `X` (`[B, m]`): rows
/// `A·x` ([`DeviceRotation::rotate_rows`], `X·Aᵀ`) or `Aᵀ·x` (`X·A`).
#[derive(Debug, Clone)]
pub enum DeviceRotation {
    /// `A` as a matrix: a QR rotation, or a small Householder one formed once.
    Dense {
        /// `A`.
        a: Tensor<2>,
    },
    /// A Householder rotation block by block in the compact WY form, `A = B₀·B₁·…·D` with
    /// `Bᵦ = I − Vᵦ·Tᵦ·Vᵦᵀ` ([`crate::crypto::haar::WyBlock`]): two thin matrix products per
    /// block, 2·B·m² multiply-adds in all, as many as one dense product, without the O(m³)
    /// cost of forming `A`.
    Blocked {
        /// The diagonal of `D`, `[1, m]`.
        signs: Tensor<2>,
        /// The blocks, first to last.
        blocks: Vec<DeviceWyBlock>,
    },
}

/// One [`crate::crypto::haar::WyBlock`] on a device.
#[derive(Debug, Clone)]
pub struct DeviceWyBlock {
    start: usize,
    v: Tensor<2>,
    v_t: Tensor<2>,
    t: Tensor<2>,
    t_t: Tensor<2>,
}

impl DeviceRotation {
    /// A Householder rotation of at most this many dimensions is formed as a matrix (O(m³) on
    /// the host, a few milliseconds); a larger one is applied block by block.
    pub const DENSE_UP_TO: usize = 256;
    /// Reflections per WY block.
    pub const BLOCK: usize = 64;

    /// `rotation` on `device`, in the form that suits its size.
    pub fn new(rotation: &HaarRotation, device: &Device) -> Self {
        Self::with_block(rotation, Self::BLOCK, device)
    }

    /// [`Self::new`] with `block` reflections per WY block (for measurements).
    pub fn with_block(rotation: &HaarRotation, block: usize, device: &Device) -> Self {
        let m = rotation.dim();
        let tensor = |values: &[f64], rows: usize, cols: usize| {
            let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
            Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), device)
        };
        match (rotation.wy_blocks(block), rotation.signs()) {
            (Some(blocks), Some(signs)) if m > Self::DENSE_UP_TO => Self::Blocked {
                signs: tensor(signs, 1, m),
                blocks: blocks
                    .iter()
                    .map(|b| {
                        let v = tensor(&b.v, b.rows, b.cols);
                        let t = tensor(&b.t, b.cols, b.cols);
                        DeviceWyBlock {
                            start: b.start,
                            v_t: v.clone().transpose(),
                            v,
                            t_t: t.clone().transpose(),
                            t,
                        }
                    })
                    .collect(),
            },
            _ => Self::Dense {
                a: tensor(&rotation.entries(), m, m),
            },
        }
    }

    /// Each row `x` of `x` (`[B, m]`) becomes `A·x`: `X·Aᵀ`.
    pub fn rotate_rows(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense { a } => x.matmul(a.clone().transpose()),
            Self::Blocked { signs, blocks } => {
                // A·x = B₀·(B₁·(…·(D·x))), and in row form X·Bᵦᵀ = X − ((X·V)·Tᵀ)·Vᵀ.
                blocks.iter().rev().fold(x * signs.clone(), |x, b| {
                    Self::apply_block(x, b.start, &b.v, &b.t_t, &b.v_t)
                })
            }
        }
    }

    /// Each row `y` of `y` (`[B, m]`) becomes `Aᵀ·y`: `Y·A`.
    pub fn unrotate_rows(&self, y: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense { a } => y.matmul(a.clone()),
            Self::Blocked { signs, blocks } => {
                // Aᵀ·y = D·(…·(B₁ᵀ·(B₀ᵀ·y))), and in row form Y·Bᵦ = Y − ((Y·V)·T)·Vᵀ.
                blocks
                    .iter()
                    .fold(y, |y, b| Self::apply_block(y, b.start, &b.v, &b.t, &b.v_t))
                    * signs.clone()
            }
        }
    }

    /// `x[:, start..] ← x[:, start..] − ((x[:, start..]·v)·t)·v_t`.
    fn apply_block(
        x: Tensor<2>,
        start: usize,
        v: &Tensor<2>,
        t: &Tensor<2>,
        v_t: &Tensor<2>,
    ) -> Tensor<2> {
        let [b, m] = x.dims();
        let tail = x.clone().slice([0..b, start..m]);
        let update = tail
            .clone()
            .matmul(v.clone())
            .matmul(t.clone())
            .matmul(v_t.clone());
        if start == 0 {
            tail - update
        } else {
            x.slice_assign([0..b, start..m], tail - update)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::haar::RotationDerivation;
    use crate::crypto::keys::{MasterKey, Scheme};

    /// A Householder rotation above [`DeviceRotation::DENSE_UP_TO`] dimensions is applied block
    /// by block; it must rotate exactly as the matrix it stands for, both ways, and a flow
    /// encryptor of that size must round-trip.
    #[test]
    fn blocked_rotation_on_a_device_equals_the_dense_one() {
        let device = Device::flex();
        let m = DeviceRotation::DENSE_UP_TO + 44;
        let key = MasterKey::from_bytes([5; 32]).class_subkey(Scheme::FlowRotation, 0);
        let rotation = HaarRotation::from_subkey(&key, m, RotationDerivation::Householder);
        let blocked = DeviceRotation::new(&rotation, &device);
        assert!(matches!(blocked, DeviceRotation::Blocked { .. }));
        let entries: Vec<f32> = rotation.entries().iter().map(|&v| v as f32).collect();
        let a = Tensor::<2>::from_data(TensorData::new(entries, [m, m]), &device);
        let x = Tensor::<2>::random(
            [6, m],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let forward = blocked.rotate_rows(x.clone());
        let err = (forward.clone() - x.clone().matmul(a.clone().transpose()))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(err < 1e-4, "A·x differs from the matrix's by {err}");
        let err = (blocked.unrotate_rows(x.clone()) - x.clone().matmul(a))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(err < 1e-4, "Aᵀ·x differs from the matrix's by {err}");
        let back = (blocked.unrotate_rows(forward) - x.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(back < 1e-4, "Aᵀ·A·x is off by {back}");
        // A QR rotation, or a small Householder one, is dense.
        let small = HaarRotation::from_subkey(&key, 64, RotationDerivation::Householder);
        assert!(matches!(
            DeviceRotation::new(&small, &device),
            DeviceRotation::Dense { .. }
        ));
    }
}
