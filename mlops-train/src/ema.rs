//! An exponential moving average (EMA) of the weights: a shadow copy of the network that
//! validation scores and export uses, smoothing out the noise of the last optimizer steps.
//!
//! Every floating-point variable is averaged, batch-norm running statistics included (as timm's
//! `ModelEmaV2` does), so the shadow's statistics describe the shadow's own weights' history
//! rather than the live network's last batches.

use tch::{nn, Kind, Tensor};

use crate::Result;

/// The shadow network with its variables.
#[derive(Debug)]
pub struct Ema<M> {
    /// The shadow's variables: frozen (no gradients), on the live store's device.
    pub vs: nn::VarStore,
    /// The shadow network, built over `vs`.
    pub model: M,
    decay: f64,
    /// `(live, shadow)` pairs, shallow clones of the two stores' variables.
    pairs: Vec<(Tensor, Tensor)>,
}

impl<M> Ema<M> {
    /// A shadow of `live` (built like it by `build`, then set to its current values).
    pub fn new(live: &nn::VarStore, decay: f64, build: impl Fn(&nn::Path) -> M) -> Result<Self> {
        let mut vs = nn::VarStore::new(live.device());
        let model = build(&vs.root());
        vs.copy(live)?;
        vs.freeze();
        let shadow = vs.variables();
        let mut pairs: Vec<(String, Tensor, Tensor)> = live
            .variables()
            .into_iter()
            .map(|(name, t)| {
                let s = shadow[&name].shallow_clone();
                (name, t, s)
            })
            .collect();
        // A fixed order keeps the floating-point work reproducible.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema {
            vs,
            model,
            decay,
            pairs: pairs.into_iter().map(|(_, l, s)| (l, s)).collect(),
        })
    }

    /// The decay in force after `step` optimizer steps: ramps up from 0.1 so that the average
    /// is not dominated by the random initialisation early on (TensorFlow's `num_updates`).
    pub fn decay_at(&self, step: i64) -> f64 {
        self.decay.min((1 + step) as f64 / (10 + step) as f64)
    }

    /// Folds the live weights in after optimizer step number `step` (counted from 1).
    pub fn update(&mut self, step: i64) {
        let d = self.decay_at(step);
        // shadow = d * shadow + (1 - d) * live, in place: one multi-tensor lerp for the floating
        // variables (on a GPU one launch, not one per variable), a copy for the rest.
        let (mut shadows, mut lives) = (Vec::new(), Vec::new());
        tch::no_grad(|| {
            for (live, shadow) in &mut self.pairs {
                if matches!(
                    live.kind(),
                    Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                ) {
                    shadows.push(shadow.shallow_clone());
                    lives.push(live.shallow_clone());
                } else {
                    shadow.copy_(live);
                }
            }
        });
        mlops_torch::foreach::lerp(&shadows, &lives, 1.0 - d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn shadow_follows_the_live_weights_with_the_decay() {
        let live = nn::VarStore::new(Device::Cpu);
        let w = live.root().zeros("w", &[3]);
        let mut ema = Ema::new(&live, 0.5, |p| p.zeros("w", &[3])).unwrap();
        let shadow = ema.vs.variables()["w"].shallow_clone();
        assert!(!shadow.requires_grad());
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(4.0);
        });
        // Step 1: the ramp gives min(0.5, 2/11) = 0.1818...; shadow = 0.1818 * 0 + 0.8182 * 4.
        ema.update(1);
        let after1 = shadow.double_value(&[0]);
        assert!((after1 - 4.0 * 9.0 / 11.0).abs() < 1e-5, "{after1}");
        // Late steps use the configured decay: halfway from the shadow to the live value.
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(0.0);
        });
        ema.update(1000);
        assert!((shadow.double_value(&[2]) - after1 * 0.5).abs() < 1e-5);
        assert_eq!(ema.decay_at(1000), 0.5);
    }
}
