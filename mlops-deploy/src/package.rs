//! `mlops-deploy package`: what it takes to run a registered version elsewhere.
//!
//! - `NAME.mar`: a TorchServe model archive (zip with `MAR-INF/MANIFEST.json` as
//!   `torch-model-archiver` writes it, `model.pt`, the index, its labels, `model.json`,
//!   `classifier.json`, and a Python handler doing the same preprocessing and kNN vote);
//! - `config.properties`: TorchServe's settings to serve it (batching as ours);
//! - `k8s/`: Kubernetes manifests for our own server: a Deployment (readiness on
//!   `/v2/health/ready`, liveness on `/v2/health/live`, resources, RollingUpdate that never
//!   drops below the wanted replicas), its Service, the model-store PVC, and
//!   `prometheus-rules.yaml`: a ConfigMap holding a Prometheus rule file (mount it where
//!   Prometheus's `rule_files` look) that alerts on the server's drift judgement.

use std::io::Write;
use std::path::{Path, PathBuf};

use mlops_core::artifact::index::{INDEX_FILE, LABELS_FILE};
use mlops_core::artifact::model::{CENTRES_FILE, MODEL_DESCRIPTION_FILE, MODEL_FILE};
use mlops_core::artifact::registry::read_pointer;
use mlops_core::artifact::{VersionDir, CLASSES_FILE};
use mlops_core::{Manifest, OutputDir};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::serve::ServeConfig;
use crate::{Error, Result};

/// The TorchServe handler shipped in every archive.
pub const HANDLER: &str = include_str!("torchserve_handler.py");
/// Python packages the handler needs beyond TorchServe's own.
pub const REQUIREMENTS: &str = "faiss-cpu\nnumpy\nPillow\n";
/// The archiver version whose manifest format the archive follows.
pub const ARCHIVER_VERSION: &str = "0.12.0";

/// What to package and how to deploy it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// The registry holding the version.
    pub registry: PathBuf,
    /// The model's name in the registry (and the archive's).
    pub name: String,
    /// The version to package; `None`: the default.
    pub version: Option<u64>,
    /// Where the archive, `config.properties` and `k8s/` are written.
    pub out: PathBuf,
    /// Container image of `mlops-deploy` for the Kubernetes Deployment.
    pub image: String,
    /// Servers the Deployment runs.
    pub replicas: u32,
    /// Storage requested for the model-store PVC.
    pub storage: String,
    /// Server settings written into the manifests (batching, threads).
    pub serve: ServeConfig,
}

impl Default for PackageConfig {
    fn default() -> Self {
        PackageConfig {
            registry: PathBuf::from("registry"),
            name: "fashion-mnist".into(),
            version: None,
            out: PathBuf::from("package"),
            // The name `cargo xtask images --prefix ghcr.io/mlops-rs --tag latest` gives the
            // deploy image, as in the Kubeflow pipeline.
            image: "ghcr.io/mlops-rs/mlops-deploy:latest".into(),
            replicas: 2,
            storage: "1Gi".into(),
            serve: ServeConfig::default(),
        }
    }
}

/// Files of the archive, in the order written.
const ARCHIVED: [&str; 5] = [
    MODEL_FILE,
    MODEL_DESCRIPTION_FILE,
    INDEX_FILE,
    LABELS_FILE,
    CLASSES_FILE,
];

/// Writes the archive, TorchServe's config and the Kubernetes manifests into `config.out`.
pub fn run(config: &PackageConfig) -> Result<Manifest> {
    let version = match config.version {
        Some(v) => v,
        None => read_pointer(&config.registry, &config.name)?
            .default
            .ok_or_else(|| Error::Registry {
                path: config.registry.join(&config.name),
                message: "no default version; promote one or pass --version".into(),
            })?,
    };
    let dir = VersionDir::open_verified(&config.registry, &config.name, version)?;
    let mut manifest = Manifest::begin("package", env!("CARGO_PKG_VERSION"), config);
    manifest.inputs = dir.input_entries(ARCHIVED)?;
    let mut out = OutputDir::create(&config.out)?;
    let mar = format!("{}.mar", config.name);
    write_mar(&out.staged_path(&mar), &dir, &config.name)?;
    manifest.outputs.push(out.adopt(&mar)?);
    manifest.outputs.push(out.write_bytes(
        "config.properties",
        torchserve_properties(config, &mar, version).as_bytes(),
    )?);
    std::fs::create_dir_all(out.staged_path("k8s"))
        .map_err(|e| mlops_core::Error::io(out.staged_path("k8s"), e))?;
    for (name, doc) in kubernetes(config) {
        let text = serde_norway::to_string(&doc).map_err(|e| Error::Config(e.to_string()))?;
        manifest
            .outputs
            .push(out.write_bytes(&format!("k8s/{name}"), text.as_bytes())?);
    }
    manifest.summary = json!({ "name": config.name, "version": version, "archive": mar });
    Ok(out.commit(manifest)?)
}

/// `classifier.json` in the archive: everything the handler needs beyond the files.
fn classifier_json(dir: &VersionDir) -> Value {
    let s = &dir.summary;
    json!({
        "k": s.classifier.k,
        "vote": s.classifier.vote,
        "scoring": s.classifier.scoring,
        "centre_weight": s.classifier.centre_weight,
        "temperature": s.classifier.temperature,
        "metric": s.index.metric,
        "nprobe": s.index.nprobe,
        "ef_search": s.index.ef_search,
    })
}

/// The archive's manifest, as `torch-model-archiver` writes it.
pub fn mar_manifest(name: &str, version: u64) -> Value {
    json!({
        "createdOn": chrono::Utc::now().format("%d/%m/%Y %H:%M:%S").to_string(),
        "runtime": "python",
        "model": {
            "modelName": name,
            "serializedFile": MODEL_FILE,
            "handler": "handler.py",
            "modelVersion": format!("{version}.0"),
            "requirementsFile": "requirements.txt",
        },
        "archiverVersion": ARCHIVER_VERSION,
    })
}

fn write_mar(path: &Path, dir: &VersionDir, name: &str) -> Result<()> {
    let zip_err = |source| Error::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|e| mlops_core::Error::io(path, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut add = |entry: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(entry, options).map_err(zip_err)?;
        zip.write_all(bytes)
            .map_err(|e| mlops_core::Error::io(path, e))?;
        Ok(())
    };
    let manifest =
        serde_json::to_vec_pretty(&mar_manifest(name, dir.summary.version)).expect("plain data");
    add("MAR-INF/MANIFEST.json", &manifest)?;
    let optional = [CENTRES_FILE]
        .into_iter()
        .filter(|f| dir.manifest.output(f).is_some());
    for file in ARCHIVED.into_iter().chain(optional) {
        let src = dir.verified(file)?;
        let bytes = std::fs::read(&src).map_err(|e| mlops_core::Error::io(&src, e))?;
        add(file, &bytes)?;
    }
    let spec = serde_json::to_vec_pretty(&classifier_json(dir)).expect("plain data");
    add("classifier.json", &spec)?;
    add("handler.py", HANDLER.as_bytes())?;
    add("requirements.txt", REQUIREMENTS.as_bytes())?;
    zip.finish().map_err(zip_err)?;
    Ok(())
}

/// TorchServe's `config.properties` serving the archive with our batching.
fn torchserve_properties(config: &PackageConfig, mar: &str, version: u64) -> String {
    let s = &config.serve;
    let models = json!({
        config.name.clone(): {
            format!("{version}.0"): {
                "defaultVersion": true,
                "marName": mar,
                "minWorkers": 2,
                "maxWorkers": 2,
                "batchSize": s.batch_size,
                "maxBatchDelay": s.max_batch_delay_ms.ceil() as u64,
                "responseTimeout": 120,
            }
        }
    });
    format!(
        "inference_address=http://127.0.0.1:8080\n\
         management_address=http://127.0.0.1:8081\n\
         metrics_address=http://127.0.0.1:8082\n\
         model_store=model-store\n\
         load_models={mar}\n\
         install_py_dep_per_model=true\n\
         models={models}\n"
    )
}

/// The name of our server's Deployment, Service and container.
const APP: &str = "mlops-deploy";

/// The Deployment, Service and PersistentVolumeClaim of our server, and the ConfigMap of its
/// Prometheus rules, as JSON values named by their file.
pub fn kubernetes(config: &PackageConfig) -> Vec<(&'static str, Value)> {
    let labels =
        json!({ "app.kubernetes.io/name": APP, "app.kubernetes.io/component": "inference" });
    vec![
        ("deployment.yaml", deployment(config, &labels)),
        ("service.yaml", service(&labels)),
        ("pvc.yaml", model_store_claim(config)),
        ("prometheus-rules.yaml", rules_config_map(&labels)),
    ]
}

/// The Deployment: `config.replicas` servers reading the model store, updated one at a time
/// without dropping below the wanted replicas.
fn deployment(config: &PackageConfig, labels: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": APP, "labels": labels },
        "spec": {
            "replicas": config.replicas,
            "selector": { "matchLabels": labels },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 },
            },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container(config)],
                    "volumes": [{
                        "name": "model-store",
                        "persistentVolumeClaim": { "claimName": "mlops-model-store", "readOnly": true },
                    }],
                },
            },
        },
    })
}

/// The server's container: its arguments (batching and the drift thresholds the alert rule
/// relies on), the management token from a Secret, ports, probes and resources.
fn container(config: &PackageConfig) -> Value {
    let s = &config.serve;
    let port = |name: &str, port: u16| json!({ "name": name, "containerPort": port });
    let probe = |path: &str, delay: u32| {
        json!({
            "httpGet": { "path": path, "port": "inference" },
            "initialDelaySeconds": delay,
            "periodSeconds": 5,
            "failureThreshold": 3,
        })
    };
    json!({
        "name": APP,
        "image": config.image,
        "args": [
            "serve", "--registry", "/models",
            "--inference-addr", "0.0.0.0:8080",
            "--management-addr", "0.0.0.0:8081",
            "--metrics-addr", "0.0.0.0:8082",
            "--batch-size", s.batch_size.to_string(),
            "--max-batch-delay-ms", s.max_batch_delay_ms.to_string(),
            // The drift thresholds the alert rule relies on, explicitly.
            "--set", format!("drift.enabled={}", s.drift.enabled),
            "--set", format!("drift.window={}", s.drift.window),
            "--set", format!("drift.min_requests={}", s.drift.min_requests),
            "--set", format!("drift.low_similarity_quantile={:?}", s.drift.low_similarity_quantile),
            "--set", format!("drift.max_low_share={:?}", s.drift.max_low_share),
            "--set", format!("drift.max_class_shift={:?}", s.drift.max_class_shift),
        ],
        "env": [{
            "name": "MLOPS_MANAGEMENT_TOKEN",
            "valueFrom": { "secretKeyRef": { "name": "mlops-deploy", "key": "management-token" } },
        }],
        "ports": [port("inference", 8080), port("management", 8081), port("metrics", 8082)],
        "readinessProbe": probe("/v2/health/ready", 2),
        "livenessProbe": probe("/v2/health/live", 10),
        "resources": {
            "requests": { "cpu": "1", "memory": "256Mi" },
            "limits": { "cpu": "2", "memory": "512Mi" },
        },
        "volumeMounts": [{ "name": "model-store", "mountPath": "/models", "readOnly": true }],
    })
}

/// The Service in front of the three listeners.
fn service(labels: &Value) -> Value {
    let service_port =
        |name: &str, port: u16| json!({ "name": name, "port": port, "targetPort": name });
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": APP, "labels": labels },
        "spec": {
            "selector": labels,
            "ports": [service_port("inference", 8080), service_port("management", 8081), service_port("metrics", 8082)],
        },
    })
}

/// The model store's claim, shared by every replica.
fn model_store_claim(config: &PackageConfig) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": "mlops-model-store" },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": config.storage } },
        },
    })
}

/// The ConfigMap holding [`prometheus_rules`] as [`RULES_FILE`].
fn rules_config_map(labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "mlops-deploy-prometheus-rules", "labels": labels },
        "data": { RULES_FILE: prometheus_rules() },
    })
}

/// The key of the rule file in the rules ConfigMap.
pub const RULES_FILE: &str = "mlops-deploy.rules.yaml";

/// How long the server's drift judgement must hold before Prometheus alerts: two scrapes at
/// the usual 30 s, so one scrape that caught a passing spike does not page anyone.
const DRIFT_FOR: &str = "1m";

/// A Prometheus rule file: the drift alert (the server's own judgement, whose thresholds live
/// in its `[drift]` settings and are exported beside it, so the rule repeats none of them), and
/// failing inference.
pub fn prometheus_rules() -> String {
    let rules = json!({
        "groups": [{
            "name": "mlops-deploy",
            "rules": [
                {
                    "alert": "MlopsModelDrift",
                    "expr": "max by (model_name, model_version) (mlops_drift{figure=\"alert\"}) == 1",
                    "for": DRIFT_FOR,
                    "labels": { "severity": "warning" },
                    "annotations": {
                        "summary": "Model {{ $labels.model_name }} version {{ $labels.model_version }}: recent requests do not look like its test set",
                        "description": "The share of requests unlike every gallery image (mlops_drift{figure=\"low_similarity_share\"}) or the shift of the predicted classes (figure=\"class_shift\") passed its limit (figure=\"max_low_share\", \"max_class_shift\") over the server's drift window.",
                    },
                },
                {
                    "alert": "MlopsInferenceFailing",
                    "expr": "sum(rate(mlops_http_errors_total{code=~\"5..\"}[5m])) > 0",
                    "for": "5m",
                    "labels": { "severity": "critical" },
                    "annotations": {
                        "summary": "mlops-deploy answers requests with server errors",
                        "description": "{{ $value }} 5xx answers per second over the last 5 minutes.",
                    },
                },
            ],
        }],
    });
    serde_norway::to_string(&rules).expect("plain data")
}
