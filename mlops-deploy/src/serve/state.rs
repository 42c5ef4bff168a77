//! The models a server holds: per model, the default version every unversioned request goes to,
//! and other versions loaded on request. Swapping the default is one pointer change under a
//! write lock; a request holds an `Arc` of the version it started on, so requests in flight
//! finish on the old version while new ones reach the new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use mlops_core::artifact::registry::{self as layout, read_pointer};
use mlops_core::artifact::VersionDir;

use super::metrics::Metrics;
use super::worker::{Batching, LoadedVersion};
use super::ServeConfig;
use crate::{Error, Result};

/// One model's loaded versions.
#[derive(Default)]
pub struct ModelSlot {
    pub default: Option<Arc<LoadedVersion>>,
    pub others: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Versions a client unregistered: not served again until promoted.
    pub removed: BTreeSet<u64>,
    /// The last failure to load this model's default: the version and why, for the
    /// management API and so that a broken version is not retried until the pointer moves.
    pub failure: Option<(u64, String)>,
}

/// The versions of one model a server has loaded.
pub struct Loaded {
    pub default: Option<Arc<LoadedVersion>>,
    pub others: Vec<Arc<LoadedVersion>>,
}

/// What looking up a model found.
pub enum Lookup {
    Found(Arc<LoadedVersion>),
    NoModel,
    NoVersion,
}

/// Everything the request handlers share.
pub struct State {
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub device: tch::Device,
    models: RwLock<BTreeMap<String, ModelSlot>>,
    /// Serialises loading, so a watch pass and a `set-default` never load one version twice.
    loading: tokio::sync::Mutex<()>,
    synced: AtomicBool,
}

impl State {
    pub fn new(config: ServeConfig, device: tch::Device) -> Self {
        State {
            config,
            metrics: Arc::new(Metrics::new()),
            device,
            models: RwLock::new(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
            synced: AtomicBool::new(false),
        }
    }

    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config.batch_size.max(1),
            max_delay: std::time::Duration::from_micros(
                (self.config.max_batch_delay_ms * 1000.0).max(0.0) as u64,
            ),
            queue: self.config.queue_capacity,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelSlot>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelSlot>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Healthy: the registry was read once and every model with a default version serves one
    /// that has answered its warm-up prediction.
    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            && self
                .read()
                .values()
                .all(|slot| slot.default.as_ref().is_some_and(|v| v.ready()))
    }

    /// Whether model `name` serves a warmed-up default.
    pub fn model_ready(&self, name: &str) -> Option<bool> {
        self.read()
            .get(name)
            .map(|slot| slot.default.as_ref().is_some_and(|v| v.ready()))
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
                Some(v) => {
                    if let Some(d) = slot.default.as_ref().filter(|d| d.version == v) {
                        return Ok(Lookup::Found(d.clone()));
                    }
                    if let Some(o) = slot.others.get(&v) {
                        return Ok(Lookup::Found(o.clone()));
                    }
                }
            }
        }
        let v = version.expect("the default case returned above");
        if !layout::versions(&self.config.registry, name)?.contains(&v) {
            return Ok(Lookup::NoVersion);
        }
        let _loading = self.loading.lock().await;
        if let Some(o) = self
            .read()
            .get(name)
            .and_then(|s| s.others.get(&v).cloned())
        {
            return Ok(Lookup::Found(o));
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
            LoadedVersion::load(
                dir,
                state.device,
                state.config.precision,
                state.config.k,
                state.batching(),
                state.metrics.clone(),
            )
        })
        .await
        .map_err(|e| Error::Config(format!("loading {v}: {e}")))?
    }

    /// Makes `v` the default of `name`: load it, record it in the registry, then swap.
    pub async fn set_default(self: &Arc<Self>, name: &str, v: u64) -> Result<()> {
        let _loading = self.loading.lock().await;
        let loaded = self.load(name, v).await?;
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
        let old = slot.default.replace(loaded.clone());
        tracing::info!(
            model = name,
            version = loaded.version,
            previous = ?old.map(|o| o.version),
            "serving as default"
        );
    }

    /// Stops serving version `v` of `name` (not the default).
    pub fn unload(&self, name: &str, v: u64) -> Result<bool, &'static str> {
        let mut models = self.write();
        let slot = models.get_mut(name).ok_or("model")?;
        if slot.default.as_ref().is_some_and(|d| d.version == v) {
            return Err("default");
        }
        let known = slot.others.remove(&v).is_some()
            || layout::versions(&self.config.registry, name)
                .map(|vs| vs.contains(&v))
                .unwrap_or(false);
        if known {
            slot.removed.insert(v);
        }
        Ok(known)
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
            let wanted = match read_pointer(&registry, &name) {
                Ok(p) => p.default,
                Err(e) => {
                    tracing::error!(model = %name, "cannot read its pointer: {e}");
                    continue;
                }
            };
            let Some(v) = wanted else { continue };
            let current = self
                .read()
                .get(&name)
                .and_then(|s| s.default.as_ref().map(|d| d.version));
            if current == Some(v) || self.failed_before(&name, v) {
                continue;
            }
            let _loading = self.loading.lock().await;
            match self.load(&name, v).await {
                Ok(loaded) => self.swap_default(&name, loaded),
                Err(e) => {
                    tracing::error!(model = %name, version = v, "cannot load: {e}");
                    let mut models = self.write();
                    let slot = models.entry(name.clone()).or_default();
                    slot.failure = Some((v, e.to_string()));
                }
            }
        }
        self.synced.store(true, Ordering::Release);
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
