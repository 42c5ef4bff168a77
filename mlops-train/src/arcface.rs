//! ArcFace: additive angular margin loss (Deng et al., 2019), optionally with sub-centres
//! (Deng et al., 2020).

use mlops_core::artifact::model::ArcFaceConfig;
use tch::{nn, Tensor};

/// The ArcFace head: learnable centres on the unit sphere, `sub_centres` per class.
#[derive(Debug)]
pub struct ArcFace {
    /// The centres, `[classes * sub_centres, dim]`, class `c`'s in rows
    /// `c * sub_centres..(c + 1) * sub_centres` (unnormalised; rows are L2-normalised wherever
    /// they are used).
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
        let rows = classes * config.sub_centres.max(1) as i64;
        let weight = vs.var("weight", &[rows, dim], nn::init::DEFAULT_KAIMING_UNIFORM);
        Self::with_weight(weight, config)
    }

    /// A head over existing centres `weight` (`[classes * sub_centres, dim]`), e.g. loaded
    /// ones.
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

    /// Cosine similarity of each (already L2-normalised) embedding to each class: `[n,
    /// classes]`, the nearest of the class's sub-centres.
    pub fn cosine(&self, embeddings: &Tensor) -> Tensor {
        let k = self.sub_centres();
        let cos = self.sub_centre_cosines(embeddings);
        if k == 1 {
            return cos;
        }
        let n = cos.size()[0];
        cos.reshape([n, -1, k]).amax([2i64].as_slice(), false)
    }

    /// Centres per class.
    pub fn sub_centres(&self) -> i64 {
        self.config.sub_centres.max(1) as i64
    }

    /// Cosine of each embedding to every centre: `[n, classes * sub_centres]`.
    fn sub_centre_cosines(&self, embeddings: &Tensor) -> Tensor {
        let centres = normalize(&self.weight);
        embeddings
            .matmul(&centres.transpose(0, 1))
            .clamp(-1.0 + EPS, 1.0 - EPS)
    }

    /// One L2-normalised centre per class, `[classes, dim]`: with sub-centres, each class's
    /// dominant one, the centre most of the class's `embeddings` (labelled `labels`) are
    /// nearest to (the first on a tie or when the class has none).
    pub fn class_centres(&self, embeddings: &Tensor, labels: &Tensor) -> Tensor {
        let k = self.sub_centres();
        let centres = normalize(&self.weight);
        if k == 1 {
            return centres;
        }
        let classes = centres.size()[0] / k;
        let cos = self
            .sub_centre_cosines(&embeddings.to_device(centres.device()))
            .reshape([-1, classes, k]);
        let labels = labels.to_device(centres.device()).to_kind(tch::Kind::Int64);
        // Each embedding's own class's row of sub-centre cosines, then which is nearest.
        let own = cos
            .gather(1, &labels.view([-1, 1, 1]).expand([-1, 1, k], false), false)
            .squeeze_dim(1);
        let nearest = own.argmax(1, false);
        let counts = Tensor::zeros([classes * k], (tch::Kind::Int64, centres.device())).index_add(
            0,
            &(&labels * k + nearest),
            &labels.ones_like(),
        );
        let dominant = counts.reshape([classes, k]).argmax(1, false);
        let rows = Tensor::arange(classes, (tch::Kind::Int64, centres.device())) * k + dominant;
        centres.index_select(0, &rows)
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

    /// Each sample's cross-entropy of [`ArcFace::logits`] (`[n]`), targets smoothed as in
    /// [`ArcFace::smoothed_loss`].
    pub fn sample_losses(&self, embeddings: &Tensor, labels: &Tensor, smoothing: f64) -> Tensor {
        self.logits(embeddings, labels)
            .cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::None, -100, smoothing)
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
    fn sub_centres_score_a_class_by_its_nearest_centre_and_export_the_dominant_one() {
        let config = ArcFaceConfig {
            sub_centres: 2,
            ..Default::default()
        };
        // Class 0 has centres at 0 and 90 degrees, class 1 at 180 and 270 degrees.
        let w = f32_tensor(&[1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0], &[4, 2]);
        let head = ArcFace::with_weight(w, config);
        // At 80 degrees: nearest class-0 centre is 10 degrees away, nearest class-1 100.
        let t = 80f64.to_radians();
        let emb = f32_tensor(&[t.cos() as f32, t.sin() as f32], &[1, 2]);
        let cos = head.cosine(&emb);
        assert_eq!(cos.size(), [1, 2]);
        assert!((cos.double_value(&[0, 0]) - 10f64.to_radians().cos()).abs() < 1e-5);
        assert!((cos.double_value(&[0, 1]) - 100f64.to_radians().cos()).abs() < 1e-5);
        // The margin goes on the nearest sub-centre's angle.
        let logit = head
            .logits(&emb, &Tensor::from_slice(&[0i64]))
            .double_value(&[0, 0]);
        assert!((logit - 32.0 * (10f64.to_radians() + 0.5).cos()).abs() < 1e-3);
        // Two class-0 images near 90 degrees, one near 0; one class-1 image near 180: class 0
        // exports its 90-degree centre, class 1 its 180-degree one.
        let emb = f32_tensor(&[0.1, 1.0, 0.0, 1.0, 1.0, 0.1, -1.0, 0.1], &[4, 2]);
        let emb = normalize(&emb);
        let centres = head.class_centres(&emb, &Tensor::from_slice(&[0i64, 0, 0, 1]));
        let got: Vec<f32> = centres.flatten(0, -1).try_into().unwrap();
        assert_eq!(got, [0.0, 1.0, -1.0, 0.0]);
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
