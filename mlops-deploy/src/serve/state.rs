//! The models a server holds: per model, the default version every unversioned request goes to,
//! the candidate of a rollout in progress (a canary answering a share of the unversioned
//! requests, or a shadow predicting beside the default), and other versions loaded on request.
//! Swapping the default is one pointer change under a write lock; a request holds an `Arc` of
//! the version it started on, so requests in flight finish on the old version while new ones
//! reach the new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use mlops_core::artifact::registry::{self as layout, read_pointer};
use mlops_core::artifact::{Rollout, RolloutMode, VersionDir};
use mlops_core::notify::Notifier;

use super::metrics::{Metrics, Role};
use super::worker::{Batching, LoadedVersion, Settings};
use super::ServeConfig;
use crate::{Error, Result};

/// A rollout the server is carrying out: the registry's record and the loaded candidate.
pub struct ActiveRollout {
    /// The rollout as the registry's pointer records it.
    pub spec: Rollout,
    /// The candidate, loaded.
    pub candidate: Arc<LoadedVersion>,
    /// Unversioned requests routed so far: spreads a canary's share evenly over requests
    /// without an id.
    routed: AtomicU64,
}

/// Where one unversioned (or pinned) request goes.
pub struct Route {
    /// The version that answers.
    pub serve: Arc<LoadedVersion>,
    /// How the request reached it, for the metrics.
    pub role: Role,
    /// A candidate that predicts beside it without answering (shadow rollout).
    pub shadow: Option<Arc<LoadedVersion>>,
}

/// Whether request number `n` (or the request with `id`) goes to a canary taking `percent` of
/// the traffic (pure). With an id the choice is a hash of it, so a client retrying (or a user
/// whose requests carry their id) always reaches the same version; without one, the requests
/// are spread so that exactly `percent` of every run of them go to the canary.
pub fn to_canary(percent: f64, id: Option<&str>, n: u64) -> bool {
    let p = percent.clamp(0.0, 100.0) / 100.0;
    match id {
        Some(id) => (stable_hash(id.as_bytes()) % 1_000_000) as f64 / 1e6 < p,
        None => ((n + 1) as f64 * p).floor() > (n as f64 * p).floor(),
    }
}

/// FNV-1a followed by splitmix64's finaliser: stable across processes and versions (unlike
/// std's `DefaultHasher`), and with every input bit reaching the low bits taken above.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Why a version was not unloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// Unloaded: not served again until promoted.
    Removed,
    /// The model has no such version.
    NoVersion,
    /// The server has no such model.
    NoModel,
    /// The default cannot be removed.
    IsDefault,
    /// The candidate of a rollout in progress cannot be removed.
    InRollout,
}

/// One model's loaded versions.
#[derive(Default)]
pub struct ModelSlot {
    /// The version unversioned requests go to, once loaded.
    pub default: Option<Arc<LoadedVersion>>,
    /// Versions loaded because a request named them.
    pub others: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Versions a client unregistered: not served again until promoted.
    pub removed: BTreeSet<u64>,
    /// The last failure to load this model's default: the version and why, for the
    /// management API and so that a broken version is not retried until the pointer moves.
    pub failure: Option<(u64, String)>,
    /// The rollout in progress, if any.
    pub rollout: Option<Arc<ActiveRollout>>,
    /// A rollout candidate that failed to load: not retried until the pointer names another.
    pub rollout_failure: Option<u64>,
}

/// The versions of one model a server has loaded.
pub struct Loaded {
    /// The default, once loaded.
    pub default: Option<Arc<LoadedVersion>>,
    /// Versions loaded because a request named them.
    pub others: Vec<Arc<LoadedVersion>>,
}

/// What looking up a model found.
pub enum Lookup {
    /// The version, loaded.
    Found(Arc<LoadedVersion>),
    /// No such model.
    NoModel,
    /// No such version (or, for the default, none loaded yet).
    NoVersion,
}

/// Everything the request handlers share.
pub struct State {
    /// The server's settings.
    pub config: ServeConfig,
    /// The metrics every handler and inference thread records.
    pub metrics: Arc<Metrics>,
    /// Where models run.
    pub device: tch::Device,
    settings: Settings,
    models: RwLock<BTreeMap<String, ModelSlot>>,
    /// Serialises loading, so a watch pass and a `set-default` never load one version twice.
    loading: tokio::sync::Mutex<()>,
    synced: AtomicBool,
}

impl State {
    /// A server for `config.registry` with nothing loaded yet ([`State::sync`] loads).
    pub fn new(config: ServeConfig, device: tch::Device) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (workers, threads_per_worker) = config.inference_threads(device);
        let settings = Settings {
            device,
            precision: config.precision,
            k: config.k,
            batching: Batching {
                batch_size: config.batch_size.max(1),
                max_delay: std::time::Duration::from_micros(
                    (config.max_batch_delay_ms * 1000.0).max(0.0) as u64,
                ),
                queue: config.queue_capacity,
            },
            workers,
            threads_per_worker,
            metrics: metrics.clone(),
            drift: config.drift.clone(),
            notifier: Arc::new(Notifier::from_env()),
        };
        State {
            config,
            metrics,
            device,
            settings,
            models: RwLock::new(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
            synced: AtomicBool::new(false),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelSlot>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelSlot>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Healthy: the registry was read once and every model with a default version serves one
    /// (loaded, so warmed up: [`LoadedVersion::load`]).
    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            && self.read().values().all(|slot| slot.default.is_some())
    }

    /// Whether model `name` serves a warmed-up default.
    pub fn model_ready(&self, name: &str) -> Option<bool> {
        self.read().get(name).map(|slot| slot.default.is_some())
    }

    /// Inference threads each loaded version runs (`ServeConfig::inference_threads`, settled
    /// at start).
    pub fn workers(&self) -> usize {
        self.settings.workers
    }

    /// Model names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The default and the other loaded versions of `name`.
    pub fn loaded(&self, name: &str) -> Option<Loaded> {
        self.read().get(name).map(|slot| Loaded {
            default: slot.default.clone(),
            others: slot.others.values().cloned().collect(),
        })
    }

    /// The last load failure of `name`'s default, if any.
    pub fn failure(&self, name: &str) -> Option<String> {
        self.read()
            .get(name)
            .and_then(|s| s.failure.as_ref())
            .map(|(v, e)| format!("version {v}: {e}"))
    }

    /// Where an unversioned request for `name` goes: the default, or the candidate of a canary
    /// rollout for its share (by `request_id` when there is one), with the shadow candidate
    /// beside it; `None` when the model has no default loaded.
    pub fn route(&self, name: &str, request_id: Option<&str>) -> Option<Route> {
        let models = self.read();
        let slot = models.get(name)?;
        let default = slot.default.clone()?;
        let plain = |serve| Route {
            serve,
            role: Role::Default,
            shadow: None,
        };
        let Some(rollout) = &slot.rollout else {
            return Some(plain(default));
        };
        Some(match rollout.spec.mode {
            RolloutMode::Canary { percent } => {
                let n = rollout.routed.fetch_add(1, Ordering::Relaxed);
                if to_canary(percent, request_id, n) {
                    Route {
                        serve: rollout.candidate.clone(),
                        role: Role::Canary,
                        shadow: None,
                    }
                } else {
                    plain(default)
                }
            }
            RolloutMode::Shadow => Route {
                shadow: Some(rollout.candidate.clone()),
                ..plain(default)
            },
        })
    }

    /// The rollout in progress for `name`, if any.
    pub fn rollout(&self, name: &str) -> Option<Arc<ActiveRollout>> {
        self.read().get(name).and_then(|s| s.rollout.clone())
    }

    /// Version `v` of `name` when this server has it loaded in any role.
    fn find_loaded(&self, name: &str, v: u64) -> Option<Arc<LoadedVersion>> {
        let models = self.read();
        let slot = models.get(name)?;
        slot.default
            .iter()
            .chain(slot.rollout.as_ref().map(|r| &r.candidate))
            .chain(slot.others.get(&v))
            .find(|l| l.version == v)
            .cloned()
    }

    /// The version a request for `name` (and `version`, else the default) goes to, loading a
    /// registered non-default version on first use.
    pub async fn lookup(self: &Arc<Self>, name: &str, version: Option<u64>) -> Result<Lookup> {
        {
            let models = self.read();
            let Some(slot) = models.get(name) else {
                return Ok(Lookup::NoModel);
            };
            match version {
                None => {
                    return Ok(slot
                        .default
                        .clone()
                        .map_or(Lookup::NoVersion, Lookup::Found))
                }
                Some(v) if slot.removed.contains(&v) => return Ok(Lookup::NoVersion),
                Some(_) => {}
            }
        }
        let v = version.expect("the default case returned above");
        if let Some(found) = self.find_loaded(name, v) {
            return Ok(Lookup::Found(found));
        }
        if !layout::versions(&self.config.registry, name)?.contains(&v) {
            return Ok(Lookup::NoVersion);
        }
        let _loading = self.loading.lock().await;
        if let Some(found) = self.find_loaded(name, v) {
            return Ok(Lookup::Found(found));
        }
        let loaded = self.load(name, v).await?;
        if let Some(slot) = self.write().get_mut(name) {
            slot.others.insert(v, loaded.clone());
        }
        Ok(Lookup::Found(loaded))
    }

    /// Loads (verifies, warms up) version `v` of `name` off the async threads.
    async fn load(self: &Arc<Self>, name: &str, v: u64) -> Result<Arc<LoadedVersion>> {
        let state = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let dir = VersionDir::open(&layout::version_dir(&state.config.registry, &name, v)?)?;
            LoadedVersion::load(dir, &state.settings)
        })
        .await
        .map_err(|e| Error::Config(format!("loading {v}: {e}")))?
    }

    /// Makes `v` the default of `name`: load it, record it in the registry, then swap.
    pub async fn set_default(self: &Arc<Self>, name: &str, v: u64) -> Result<()> {
        let _loading = self.loading.lock().await;
        let loaded = match self.find_loaded(name, v) {
            Some(l) => l,
            None => self.load(name, v).await?,
        };
        let registry = self.config.registry.clone();
        let model = name.to_string();
        tokio::task::spawn_blocking(move || crate::registry::promote(&registry, &model, v))
            .await
            .map_err(|e| Error::Config(format!("promoting {v}: {e}")))??;
        self.swap_default(name, loaded);
        Ok(())
    }

    fn swap_default(&self, name: &str, loaded: Arc<LoadedVersion>) {
        let mut models = self.write();
        let slot = models.entry(name.to_string()).or_default();
        slot.removed.remove(&loaded.version);
        slot.others.remove(&loaded.version);
        slot.failure = None;
        // A new default ends any rollout (promoting clears the registry's too; a rollout
        // started since is picked up again by the next sync).
        slot.rollout = None;
        let old = slot.default.replace(loaded.clone());
        tracing::info!(
            model = name,
            version = loaded.version,
            previous = ?old.map(|o| o.version),
            "serving as default"
        );
    }

    /// Stops serving version `v` of `name` (neither the default nor a rollout's candidate).
    pub fn unload(&self, name: &str, v: u64) -> Unload {
        let mut models = self.write();
        let Some(slot) = models.get_mut(name) else {
            return Unload::NoModel;
        };
        if slot.default.as_ref().is_some_and(|d| d.version == v) {
            return Unload::IsDefault;
        }
        if slot
            .rollout
            .as_ref()
            .is_some_and(|r| r.candidate.version == v)
        {
            return Unload::InRollout;
        }
        let known = slot.others.remove(&v).is_some()
            || layout::versions(&self.config.registry, name)
                .map(|vs| vs.contains(&v))
                .unwrap_or(false);
        if known {
            slot.removed.insert(v);
            Unload::Removed
        } else {
            Unload::NoVersion
        }
    }

    /// Brings the served defaults in line with the registry's pointers: new models appear,
    /// promoted versions are loaded and swapped in. A version that fails to load (a file whose
    /// checksum does not match, named in the log) leaves the previous default serving.
    pub async fn sync(self: &Arc<Self>) {
        let registry = self.config.registry.clone();
        let names = match layout::models(&registry) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!("cannot read the registry: {e}");
                return;
            }
        };
        for name in names {
            let pointer = match read_pointer(&registry, &name) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(model = %name, "cannot read its pointer: {e}");
                    continue;
                }
            };
            if let Some(v) = pointer.default {
                self.sync_default(&name, v).await;
            }
            self.sync_rollout(&name, pointer.rollout).await;
        }
        self.synced.store(true, Ordering::Release);
    }

    async fn sync_default(self: &Arc<Self>, name: &str, v: u64) {
        let current = self
            .read()
            .get(name)
            .and_then(|s| s.default.as_ref().map(|d| d.version));
        if current == Some(v) || self.failed_before(name, v) {
            return;
        }
        let _loading = self.loading.lock().await;
        let loaded = match self.find_loaded(name, v) {
            Some(l) => Ok(l),
            None => self.load(name, v).await,
        };
        match loaded {
            Ok(loaded) => self.swap_default(name, loaded),
            Err(e) => {
                tracing::error!(model = %name, version = v, "cannot load: {e}");
                let mut models = self.write();
                let slot = models.entry(name.to_string()).or_default();
                slot.failure = Some((v, e.to_string()));
            }
        }
    }

    /// Starts, changes or ends the rollout of `name` as the registry's pointer says.
    async fn sync_rollout(self: &Arc<Self>, name: &str, wanted: Option<Rollout>) {
        let (current, failed, has_default) = {
            let models = self.read();
            let Some(slot) = models.get(name) else { return };
            (
                slot.rollout.clone(),
                slot.rollout_failure,
                slot.default.is_some(),
            )
        };
        let set = |rollout: Option<Arc<ActiveRollout>>| {
            if let Some(slot) = self.write().get_mut(name) {
                slot.rollout = rollout;
            }
        };
        match (wanted, current) {
            (None, None) => {}
            (None, Some(ended)) => {
                tracing::info!(
                    model = name,
                    candidate = ended.candidate.version,
                    "rollout ended"
                );
                set(None);
            }
            (Some(w), Some(c)) if w.candidate == c.candidate.version => {
                if w != c.spec {
                    tracing::info!(model = name, candidate = w.candidate, mode = %w.mode, "rollout changed");
                    set(Some(Arc::new(ActiveRollout {
                        spec: w,
                        candidate: c.candidate.clone(),
                        routed: AtomicU64::new(0),
                    })));
                }
            }
            (Some(w), _) if !has_default || failed == Some(w.candidate) => {}
            (Some(w), _) => {
                let _loading = self.loading.lock().await;
                let loaded = match self.find_loaded(name, w.candidate) {
                    Some(l) => Ok(l),
                    None => self.load(name, w.candidate).await,
                };
                match loaded {
                    Ok(candidate) => {
                        tracing::info!(model = name, candidate = w.candidate, mode = %w.mode, "rollout started");
                        if let Some(slot) = self.write().get_mut(name) {
                            slot.rollout_failure = None;
                            slot.rollout = Some(Arc::new(ActiveRollout {
                                spec: w,
                                candidate,
                                routed: AtomicU64::new(0),
                            }));
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            model = name,
                            version = w.candidate,
                            "cannot load the rollout's candidate: {e}"
                        );
                        if let Some(slot) = self.write().get_mut(name) {
                            slot.rollout_failure = Some(w.candidate);
                            slot.rollout = None;
                        }
                    }
                }
            }
        }
    }

    /// A version that failed to load is retried only after the pointer moves on.
    fn failed_before(&self, name: &str, v: u64) -> bool {
        self.read()
            .get(name)
            .and_then(|s| s.failure.as_ref())
            .is_some_and(|(failed, _)| *failed == v)
    }

    /// The registry directory this server reads.
    pub fn registry(&self) -> &PathBuf {
        &self.config.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_without_ids_takes_exactly_its_share() {
        for percent in [1.0, 10.0, 33.3, 50.0, 90.0] {
            let sent = (0..2000).filter(|&n| to_canary(percent, None, n)).count();
            let want = 2000.0 * percent / 100.0;
            assert!((sent as f64 - want).abs() <= 1.0, "{percent}%: {sent}");
        }
    }

    const PINNED: u64 = 0x0a28_81c3_268a_7392;

    #[test]
    fn a_canary_by_id_takes_its_share_and_keeps_each_id_on_one_side() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let sent = ids.iter().filter(|id| to_canary(10.0, Some(id), 0)).count();
        assert!((1_800..=2_200).contains(&sent), "{sent} of 20000");
        for id in &ids[..100] {
            let first = to_canary(10.0, Some(id), 0);
            assert!((1..50).all(|n| to_canary(10.0, Some(id), n) == first));
        }
        // Pinned: the split must not change between releases, or a rollout would move users.
        assert_eq!(
            stable_hash(b"req-1"),
            PINNED,
            "{:#x}",
            stable_hash(b"req-1")
        );
    }
}
