//! ArcFace: additive angular margin loss (Deng et al., 2019).

use mlops_core::artifact::model::ArcFaceConfig;
use tch::{nn, Tensor};

/// The ArcFace head: one learnable centre per class on the unit sphere.
#[derive(Debug)]
pub struct ArcFace {
    /// The class centres, `[classes, dim]`, one row per class (unnormalised; rows are
    /// L2-normalised wherever they are used).
    pub weight: Tensor,
    config: ArcFaceConfig,
    cos_m: f64,
    sin_m: f64,
    th: f64,
    mm: f64,
}

// Keeps acos/sqrt away from their singular points at |cos| = 1.
const EPS: f64 = 1e-7;

impl ArcFace {
    /// A head for `classes` classes of `dim`-dimensional embeddings, its centres created as
    /// variable `weight` under `vs` (Kaiming-uniform initialisation).
    pub fn new(vs: nn::Path, dim: i64, classes: i64, config: ArcFaceConfig) -> Self {
        let weight = vs.var("weight", &[classes, dim], nn::init::DEFAULT_KAIMING_UNIFORM);
        Self::with_weight(weight, config)
    }

    /// A head over existing centres `weight` (`[classes, dim]`), e.g. loaded ones.
    pub fn with_weight(weight: Tensor, config: ArcFaceConfig) -> Self {
        let m = config.margin;
        ArcFace {
            weight,
            config,
            cos_m: m.cos(),
            sin_m: m.sin(),
            th: (std::f64::consts::PI - m).cos(),
            mm: (std::f64::consts::PI - m).sin() * m,
        }
    }

    /// Cosine similarity of each (already L2-normalised) embedding to each class centre.
    pub fn cosine(&self, embeddings: &Tensor) -> Tensor {
        let centres = normalize(&self.weight);
        embeddings
            .matmul(&centres.transpose(0, 1))
            .clamp(-1.0 + EPS, 1.0 - EPS)
    }

    /// Scaled logits with the margin added to each sample's target class: `s*cos(theta+m)`
    /// where `theta + m < pi`, else `s*(cos(theta) - m*sin(m))` so the logit stays monotonic.
    pub fn logits(&self, embeddings: &Tensor, labels: &Tensor) -> Tensor {
        let cosine = self.cosine(embeddings);
        // cos is clamped below 1, so 1 - cos^2 >= ~2e-7 and sqrt's gradient stays finite.
        let sine = (cosine.square() * -1.0 + 1.0).clamp(1e-12, 1.0).sqrt();
        let phi = &cosine * self.cos_m - &sine * self.sin_m;
        let phi = if self.config.easy_margin {
            phi.where_self(&cosine.gt(0.0), &cosine)
        } else {
            phi.where_self(&cosine.gt(self.th), &(&cosine - self.mm))
        };
        let one_hot = cosine
            .zeros_like()
            .scatter_value(1, &labels.unsqueeze(1), 1.0);
        (&one_hot * phi + (1.0 - &one_hot) * cosine) * self.config.scale
    }

    /// Mean cross-entropy of [`ArcFace::logits`].
    pub fn loss(&self, embeddings: &Tensor, labels: &Tensor) -> Tensor {
        self.smoothed_loss(embeddings, labels, 0.0)
    }

    /// Mean cross-entropy of [`ArcFace::logits`] against targets smoothed by `smoothing`
    /// (the true class gets `1 - smoothing + smoothing / classes`, every other
    /// `smoothing / classes`).
    pub fn smoothed_loss(&self, embeddings: &Tensor, labels: &Tensor, smoothing: f64) -> Tensor {
        self.logits(embeddings, labels)
            .cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, smoothing)
    }
}

/// Rows scaled to unit L2 norm.
pub fn normalize(xs: &Tensor) -> Tensor {
    let norm = xs
        .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    xs / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn f32_tensor(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values)
            .reshape(shape)
            .to_kind(Kind::Float)
    }

    /// A head with 2-d centres at angle 0 and 90 degrees, queried by unit vectors at `theta`.
    fn target_logit(theta_deg: f64, config: ArcFaceConfig) -> f64 {
        let head = ArcFace::with_weight(f32_tensor(&[1.0, 0.0, 0.0, 1.0], &[2, 2]), config);
        let t = theta_deg.to_radians();
        let emb = f32_tensor(&[t.cos() as f32, t.sin() as f32], &[1, 2]);
        let labels = Tensor::from_slice(&[0i64]);
        let logits = head.logits(&emb, &labels);
        // The non-target class keeps its plain scaled cosine: cos(90 - theta) = sin(theta).
        let other = logits.double_value(&[0, 1]);
        assert!((other - config.scale * t.sin()).abs() < 1e-4, "{other}");
        logits.double_value(&[0, 0])
    }

    #[test]
    fn margin_is_added_to_the_target_angle() {
        let c = ArcFaceConfig::default();
        // theta + m < pi: s * cos(theta + m), with m = 0.5 rad.
        for theta in [10.0f64, 30.0, 60.0, 90.0] {
            let expected = 32.0 * (theta.to_radians() + 0.5).cos();
            let got = target_logit(theta, c);
            assert!(
                (got - expected).abs() < 1e-3,
                "theta {theta}: {got} vs {expected}"
            );
        }
        // At theta = 0 the clamp that keeps gradients finite costs a little precision.
        let at_zero = target_logit(0.0, c);
        assert!((at_zero - 32.0 * 0.5f64.cos()).abs() < 0.02, "{at_zero}");
        // Hand-computed: theta = 60 deg -> cos(1.5472) = 0.023591 -> 0.75491.
        assert!((target_logit(60.0, c) - 0.75491).abs() < 1e-3);
    }

    #[test]
    fn fallback_beyond_pi_minus_m() {
        let c = ArcFaceConfig::default();
        // theta = 170 deg > pi - m (151.35 deg): s * (cos(theta) - sin(pi - m) * m).
        let theta = 170f64.to_radians();
        let mm = (std::f64::consts::PI - 0.5).sin() * 0.5;
        let expected = 32.0 * (theta.cos() - mm);
        // Hand-computed: cos(170) = -0.984808, mm = 0.239713 -> 32 * -1.224521 = -39.18467.
        assert!((expected + 39.18467).abs() < 1e-3);
        // The second centre is at 90 deg, so theta = 170 deg lies in the plane as well.
        let got = target_logit(170.0, c);
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
    }

    #[test]
    fn easy_margin_leaves_obtuse_angles_alone() {
        let c = ArcFaceConfig {
            easy_margin: true,
            ..Default::default()
        };
        let got = target_logit(120.0, c);
        let expected = 32.0 * 120f64.to_radians().cos();
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
        let got = target_logit(45.0, c);
        let expected = 32.0 * (45f64.to_radians() + 0.5).cos();
        assert!((got - expected).abs() < 1e-3);
    }

    #[test]
    fn gradients_stay_finite_at_the_poles() {
        let w = f32_tensor(&[1.0, 0.0, 0.0, 1.0], &[2, 2]).set_requires_grad(true);
        let head = ArcFace::with_weight(w.shallow_clone(), ArcFaceConfig::default());
        let emb = f32_tensor(&[1.0, 0.0, -1.0, 0.0], &[2, 2]);
        let loss = head.loss(&emb, &Tensor::from_slice(&[0i64, 0]));
        loss.backward();
        assert!(loss.double_value(&[]).is_finite());
        let grad: Vec<f32> = w.grad().flatten(0, -1).try_into().unwrap();
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
    }
}
