//! Data parallelism for tch, which has no `DataParallel`: one replica of the model per device,
//! the batch split across them, gradients summed onto the first device, one optimizer step
//! there, and every variable (weights and batch-norm statistics) broadcast back.
//!
//! Batch-norm: each replica normalises its own slice of the batch with that slice's statistics
//! (as PyTorch's `DataParallel` does, without sync-BN); the running statistics of the first
//! replica are the ones kept and broadcast.

use tch::{nn, Device, Tensor};

use crate::optim::Optimizer;

/// One model copy with its variables.
pub struct Replica<M> {
    /// The replica's variables, on its device.
    pub vs: nn::VarStore,
    /// The replica's model, built over `vs`.
    pub model: M,
}

/// A model replicated over one or more devices.
pub struct DataParallel<M> {
    replicas: Vec<Replica<M>>,
    /// One long-lived thread per replica (none for a single replica). libtorch keeps caches per
    /// thread (cuDNN's execution plans among them): threads spawned afresh each step rebuilt
    /// them every step, which made two replicas on an H200 3.5x slower than one.
    pool: Option<rayon::ThreadPool>,
}

impl<M: Send> DataParallel<M> {
    /// Builds one replica per device with `build`, then copies the first replica's initial
    /// variables into the others so that all start identical.
    pub fn new(devices: &[Device], build: impl Fn(&nn::Path) -> M) -> crate::Result<Self> {
        assert!(!devices.is_empty(), "at least one device");
        let mut replicas: Vec<Replica<M>> = devices
            .iter()
            .map(|&d| {
                let vs = nn::VarStore::new(d);
                let model = build(&vs.root());
                Replica { vs, model }
            })
            .collect();
        let (first, rest) = replicas.split_at_mut(1);
        for r in rest {
            r.vs.copy(&first[0].vs)?;
        }
        let pool = if replicas.len() > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(replicas.len())
                .thread_name(|i| format!("mlops-replica-{i}"))
                .build()
                .map_err(|e| crate::Error::Threads(e.to_string()))?;
            Some(pool)
        } else {
            None
        };
        Ok(DataParallel { replicas, pool })
    }

    /// The replica whose variables the optimizer updates.
    pub fn primary(&self) -> &Replica<M> {
        &self.replicas[0]
    }

    /// The primary replica, mutably: after changing its variables (loading a checkpoint),
    /// [`broadcast`](Self::broadcast) them so the other replicas match.
    pub fn primary_mut(&mut self) -> &mut Replica<M> {
        &mut self.replicas[0]
    }

    /// An optimizer over the primary replica's trainable variables.
    pub fn optimizer(&self, config: crate::optim::OptimizerConfig) -> Optimizer {
        Optimizer::new(config, self.replicas[0].vs.trainable_variables())
    }

    /// One training step on the batch `(xs, ys)`: forward and backward on every replica in
    /// parallel (each on its slice, loss weighted by its share so the sum is the full batch
    /// mean), gradients summed onto the primary, `opt.step(lr)`, variables broadcast.
    /// Returns the batch's mean loss.
    pub fn step<F>(
        &mut self,
        xs: &Tensor,
        ys: &Tensor,
        loss_fn: F,
        opt: &mut Optimizer,
        lr: f64,
    ) -> f64
    where
        F: Fn(&M, &Tensor, &Tensor) -> Tensor + Sync,
    {
        let n = xs.size()[0];
        let k = (self.replicas.len() as i64).min(n).max(1);
        // Equal slices, the first `n % k` one row larger.
        let sizes: Vec<i64> = (0..k).map(|i| n / k + i64::from(i < n % k)).collect();
        let xs_parts = xs.split_with_sizes(&sizes, 0);
        let ys_parts = ys.split_with_sizes(&sizes, 0);
        let active = &mut self.replicas[..k as usize];
        for r in active.iter_mut() {
            for p in r.vs.trainable_variables().iter_mut() {
                p.zero_grad();
            }
        }
        let run = |r: &Replica<M>, x: &Tensor, y: &Tensor, share: f64| -> f64 {
            let device = r.vs.device();
            let loss = loss_fn(&r.model, &x.to_device(device), &y.to_device(device));
            let value = loss.double_value(&[]);
            (loss * share).backward();
            value * share
        };
        let loss = if k == 1 {
            run(&active[0], xs, ys, 1.0)
        } else {
            let loss_fn_ref = &run;
            let pool = self
                .pool
                .as_ref()
                .expect("a replica pool when there are replicas");
            let mut losses = vec![0.0; k as usize];
            // Everything a job needs, moved in: tensors are Send but not Sync.
            let jobs: Vec<_> = active
                .iter()
                .zip(xs_parts.iter().zip(ys_parts.iter()))
                .zip(&sizes)
                .zip(losses.iter_mut())
                .map(|(((r, (x, y)), &size), slot)| {
                    let share = size as f64 / n as f64;
                    (
                        ReplicaRef(r),
                        x.shallow_clone(),
                        y.shallow_clone(),
                        share,
                        slot,
                    )
                })
                .collect();
            pool.scope(move |s| {
                for (r, x, y, share, slot) in jobs {
                    s.spawn(move |_| {
                        let r = r;
                        *slot = loss_fn_ref(r.0, &x, &y, share);
                    });
                }
            });
            losses.iter().sum()
        };
        if k > 1 {
            sum_gradients(active);
        }
        opt.step(lr);
        self.broadcast();
        loss
    }

    /// Copies the primary replica's variables into every other replica.
    pub fn broadcast(&mut self) {
        let (first, rest) = self.replicas.split_at_mut(1);
        for r in rest {
            r.vs.copy(&first[0].vs)
                .expect("replicas share one architecture");
        }
    }
}

/// Lets a scoped thread borrow a replica; tch tensors are `Send` but not `Sync`.
struct ReplicaRef<'a, M>(&'a Replica<M>);
// SAFETY: each replica is used by exactly one thread during a step, and its tensors live on
// its own device; nothing else touches it until the scope joins.
unsafe impl<M> Send for ReplicaRef<'_, M> {}

/// Adds every other replica's gradients to the first replica's.
fn sum_gradients<M>(active: &[Replica<M>]) {
    let primary = active[0].vs.trainable_variables();
    tch::no_grad(|| {
        for r in &active[1..] {
            for (p0, p) in primary.iter().zip(r.vs.trainable_variables()) {
                let g = p.grad();
                if g.defined() {
                    let mut g0 = p0.grad();
                    g0 += g.to_device(p0.device());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimizerConfig, OptimizerKind};
    use tch::nn::Module;
    use tch::Kind;

    /// A two-layer MLP without batch-norm: replicas must then match a single device exactly.
    fn mlp(vs: &nn::Path) -> nn::Sequential {
        nn::seq()
            .add(nn::linear(vs / "l1", 8, 16, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs / "l2", 16, 3, Default::default()))
    }

    fn loss(m: &nn::Sequential, x: &Tensor, y: &Tensor) -> Tensor {
        m.forward(x).cross_entropy_for_logits(y)
    }

    /// Values from a formula, not the global generator: other tests in this process draw from
    /// it concurrently, so a seed set here would not decide what this test sees.
    fn fixed(size: &[i64], phase: f64) -> Tensor {
        let n: i64 = size.iter().product();
        ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + phase).sin() * 0.5).reshape(size)
    }

    fn params_after_steps(replicas: usize, steps: usize) -> Vec<Tensor> {
        let devices = vec![Device::Cpu; replicas];
        let mut dp = DataParallel::new(&devices, mlp).unwrap();
        tch::no_grad(|| {
            let mut vars: Vec<(String, Tensor)> = dp.primary().vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (_, mut t)) in vars.into_iter().enumerate() {
                t.copy_(&fixed(&t.size(), i as f64));
            }
        });
        dp.broadcast();
        let config = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            ..Default::default()
        };
        let mut opt = dp.optimizer(config);
        for step in 0..steps {
            let x = fixed(&[33, 8], 10.0 + step as f64);
            let y = (fixed(&[33], 20.0 + step as f64) * 4.0 + 2.0)
                .floor()
                .clamp(0.0, 2.0)
                .to_kind(Kind::Int64);
            dp.step(&x, &y, loss, &mut opt, 0.1);
        }
        let mut vars: Vec<(String, Tensor)> = dp.primary().vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().map(|(_, t)| t.detach().copy()).collect()
    }

    #[test]
    fn two_replicas_match_one_device() {
        let one = params_after_steps(1, 3);
        for replicas in [2, 3] {
            let many = params_after_steps(replicas, 3);
            for (a, b) in one.iter().zip(&many) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{replicas} replicas differ by {diff}");
            }
        }
        // And the steps really changed something.
        let init = params_after_steps(1, 0);
        let moved = (&init[0] - &one[0]).abs().max().double_value(&[]);
        assert!(moved > 1e-4);
    }
}
