//! Integration tests of the registry, the packaging and the real server (started as the binary
//! on free loopback ports) over a small run made with the real stages and a fixture model.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mlops_core::artifact::{DataDir, EvalDir, Role};
use mlops_core::testing::server::{self as testing, ServerProcess};
use mlops_data::fixtures::{self, IdxFixture};
use mlops_deploy::registry::{self, RegisterConfig};
use mlops_deploy::RegisteredModel;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_mlops-deploy");

/// data -> fixture model -> embed -> index -> eval, once for all tests; and a second model of
/// the same signature (another seed) to roll out beside the first.
struct Run {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    train: PathBuf,
    index: PathBuf,
    eval: PathBuf,
    /// train, index and eval of the second model.
    candidate: [PathBuf; 3],
}

/// Model (seeded fixture), embeddings, index and evaluation of `data` under `t/name-*`.
fn stages(t: &Path, data: &Path, name: &str, seed: i64) -> [PathBuf; 3] {
    deep_stages(t, data, name, seed, 0)
}

/// [`stages`] with a model of `layers` wide hidden layers (slow on purpose).
fn deep_stages(t: &Path, data: &Path, name: &str, seed: i64, layers: usize) -> [PathBuf; 3] {
    let train = t.join(format!("{name}-train"));
    mlops_embed::testing::fixture_model_deep(&train, data, seed, layers).unwrap();
    let embed = t.join(format!("{name}-embed"));
    mlops_embed::run(&mlops_embed::EmbedConfig {
        model: train.clone(),
        data: data.to_path_buf(),
        out: embed.clone(),
        threads: 1,
        ..Default::default()
    })
    .unwrap();
    let index = t.join(format!("{name}-index"));
    mlops_index::run(&mlops_index::IndexConfig {
        embeddings: embed.clone(),
        out: index.clone(),
        ..Default::default()
    })
    .unwrap();
    let eval = t.join(format!("{name}-eval"));
    mlops_eval::run(&mlops_eval::EvalConfig {
        index: index.clone(),
        embeddings: embed,
        out: eval.clone(),
        gate: mlops_eval::GatePolicy {
            min_accuracy: 0.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    [train, index, eval]
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        fixtures::write_idx(&t.join("src"), &IdxFixture::default()).unwrap();
        let data = t.join("data");
        mlops_data::run(&mlops_data::DataConfig {
            sources: vec![t.join("src")],
            out: data.clone(),
            ..Default::default()
        })
        .unwrap();
        let [train, index, eval] = stages(t, &data, "first", 0);
        let candidate = stages(t, &data, "second", 1);
        Run {
            _tmp: tmp,
            data,
            train,
            index,
            eval,
            candidate,
        }
    })
}

fn register(registry: &Path, promote: bool) -> Result<u64> {
    let r = run();
    Ok(registry::register(&RegisterConfig {
        model: r.train.clone(),
        index: r.index.clone(),
        eval: r.eval.clone(),
        registry: registry.to_path_buf(),
        name: "fashion".into(),
        promote,
        force: false,
    })?
    .version)
}

/// Registers the second model (another seed, same signature) without promoting it.
fn register_candidate(registry: &Path) -> Result<u64> {
    let [train, index, eval] = &run().candidate;
    Ok(registry::register(&RegisterConfig {
        model: train.clone(),
        index: index.clone(),
        eval: eval.clone(),
        registry: registry.to_path_buf(),
        name: "fashion".into(),
        promote: false,
        force: false,
    })?
    .version)
}

/// The set-up venv's Python, when headless Chromium and its driver are there too.
fn browser_python() -> Option<PathBuf> {
    let python = mlops_core::testing::python()?;
    let how = "Debian's chromium and chromium-driver; cargo xtask setup installs them";
    let found = Path::new("/usr/bin/chromedriver").is_file().then_some(());
    mlops_core::testing::prerequisite("chromium-driver", found, how)?;
    Some(python)
}

/// The server binary, stopped with SIGTERM.
struct Server(ServerProcess);

impl std::ops::Deref for Server {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

/// The test-support helpers' errors as anyhow's.
fn t<T>(r: testing::TestResult<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!(e))
}

impl Server {
    fn start(registry: &Path, extra: &[&str], token: Option<&str>) -> Result<Server> {
        let log = registry.with_extension(format!("{}.log", std::process::id()));
        let mut cmd = testing::serve_command(Path::new(BIN), registry);
        cmd.args(["--io-threads", "2"])
            .args(if extra.contains(&"--threads") {
                &[][..]
            } else {
                &["--threads", "1"][..]
            })
            .args(["--set", "watch_interval_ms=100"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("MLOPS_MANAGEMENT_TOKEN");
        if let Some(t) = token {
            cmd.env("MLOPS_MANAGEMENT_TOKEN", t);
        }
        Ok(Server(t(ServerProcess::start(cmd, &log))?))
    }

    fn wait_healthy(&self) -> Result<()> {
        t(self.0.wait_healthy(Duration::from_secs(60)))
    }

    /// SIGTERM; asserts a clean exit 0 and a log without panics.
    fn stop(self) -> Result<()> {
        let (status, log) = t(self.0.stop())?;
        assert!(status.success(), "exit {status}:\n{log}");
        assert!(!log.contains("panicked"), "{log}");
        Ok(())
    }
}

fn agent() -> ureq::Agent {
    testing::agent()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value)> {
    let mut r = r?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn get(url: &str) -> Result<(u16, Value)> {
    answer(agent().get(url).call())
}

fn post(url: &str, content_type: &str, body: &[u8]) -> Result<(u16, Value)> {
    answer(
        agent()
            .post(url)
            .header("Content-Type", content_type)
            .send(body),
    )
}

fn png(pixels: &[u8], h: u32, w: u32) -> Vec<u8> {
    let img = image::GrayImage::from_raw(w, h, pixels.to_vec()).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// PNG files, their labels, image height and width.
type Images = (Vec<Vec<u8>>, Vec<i64>, usize, usize);

/// The test images as the bytes they were ingested from, and their labels.
fn test_images() -> Result<Images> {
    let data = DataDir::open(&run().data)?;
    let [_, h, w] = data.summary.image_shape;
    let (images, labels) = data.read_role(Role::Test)?;
    let pixels: Vec<u8> = images.iter().map(|v| (v * 255.0).round() as u8).collect();
    let pngs = pixels
        .chunks(h * w)
        .map(|p| png(p, h as u32, w as u32))
        .collect();
    Ok((pngs, labels.to_vec(), h, w))
}

fn multipart(image: &[u8]) -> (String, Vec<u8>) {
    let boundary = "mlopsboundary42";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn serves_predictions_equal_to_eval_on_every_api() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    assert_eq!(register(&reg, true)?, 1);
    let server = Server::start(&reg, &[], None)?;
    server.wait_healthy()?;
    let inf = &server.inference;
    assert_eq!(
        get(&format!("{inf}/ping"))?,
        (200, json!({"status": "Healthy"}))
    );

    // Every test image, posted as a PNG, gives eval's accuracy exactly.
    let (pngs, labels, h, w) = test_images()?;
    let eval = EvalDir::open(&run().eval)?;
    let classes = &eval.summary.metrics.per_class;
    let mut correct = 0;
    for (png, &label) in pngs.iter().zip(&labels) {
        let (status, p) = post(&format!("{inf}/predictions/fashion"), "image/png", png)?;
        assert_eq!(status, 200, "{p}");
        let class = p["class"].as_u64().unwrap() as usize;
        assert_eq!(p["label"], classes[class].class.as_str());
        assert_eq!(p["neighbors"].as_array().unwrap().len(), eval.summary.k);
        correct += usize::from(class as i64 == label);
    }
    let served = correct as f64 / labels.len() as f64;
    assert_eq!(served, eval.summary.metrics.accuracy);

    // Multipart field `data`, and an explicit version, give the same answer as the raw body.
    let (_, raw) = post(&format!("{inf}/predictions/fashion"), "image/png", &pngs[0])?;
    let (ct, body) = multipart(&pngs[0]);
    assert_eq!(
        post(&format!("{inf}/predictions/fashion"), &ct, &body)?,
        (200, raw.clone())
    );
    assert_eq!(
        post(&format!("{inf}/predictions/fashion/1"), "", &pngs[0])?,
        (200, raw.clone())
    );

    // KServe v2.
    assert_eq!(
        get(&format!("{inf}/v2/health/live"))?,
        (200, json!({"live": true}))
    );
    assert_eq!(
        get(&format!("{inf}/v2/health/ready"))?,
        (200, json!({"ready": true}))
    );
    let (s, meta) = get(&format!("{inf}/v2/models/fashion"))?;
    assert_eq!(
        (s, meta["name"].clone(), meta["versions"].clone()),
        (200, json!("fashion"), json!(["1"]))
    );
    assert_eq!(
        get(&format!("{inf}/v2/models/fashion/ready"))?,
        (200, json!({"name": "fashion", "ready": true}))
    );
    assert_eq!(
        get(&format!("{inf}/v2/models/fashion/versions/1/ready"))?.0,
        200
    );
    use base64::Engine;
    let b64: Vec<String> = pngs[..3]
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
        .collect();
    let request = json!({"id": "r1", "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": b64}]});
    let (s, out) = post(
        &format!("{inf}/v2/models/fashion/infer"),
        "application/json",
        request.to_string().as_bytes(),
    )?;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["id"], "r1");
    assert_eq!(out["outputs"][1]["name"], "class");
    assert_eq!(out["outputs"][1]["data"][0], raw["class"]);
    let data = DataDir::open(&run().data)?;
    let (images, _) = data.read_role(Role::Test)?;
    let first: Vec<f32> = images.iter().take(h * w).copied().collect();
    let request = json!({"inputs": [{"name": "input", "shape": [1, 1, h, w], "datatype": "FP32", "data": first}]});
    let (s, out) = post(
        &format!("{inf}/v2/models/fashion/versions/1/infer"),
        "application/json",
        request.to_string().as_bytes(),
    )?;
    assert_eq!(
        (s, out["outputs"][1]["data"][0].clone()),
        (200, raw["class"].clone()),
        "{out}"
    );

    // Management.
    let m = &server.management;
    let (s, list) = get(&format!("{m}/models"))?;
    assert_eq!(
        (s, list["models"][0]["modelName"].clone()),
        (200, json!("fashion"))
    );
    let (s, desc) = get(&format!("{m}/models/fashion"))?;
    assert_eq!(s, 200);
    assert_eq!(desc[0]["modelVersion"], "1");
    // One worker per inference thread: by default one per core, each of one libtorch thread.
    let cores = std::thread::available_parallelism()?.get();
    let workers = desc[0]["workers"].as_array().unwrap();
    assert_eq!(
        (workers.len(), desc[0]["maxWorkers"].as_u64()),
        (cores, Some(cores as u64)),
        "{desc}"
    );
    assert!(workers.iter().all(|w| w["status"] == "READY"), "{desc}");
    assert_eq!(
        get(&format!("{m}/models/fashion/all"))?
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Metrics with TorchServe's names.
    let text = agent()
        .get(&format!("{}/metrics", server.metrics))
        .call()?
        .body_mut()
        .read_to_string()?;
    for name in [
        "ts_inference_requests_total",
        "ts_inference_latency_microseconds",
        "ts_queue_latency_microseconds",
        "mlops_batch_size_bucket",
        "mlops_inference_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains("model_name=\"fashion\",model_version=\"1\""),
        "{text}"
    );
    server.stop()
}

#[test]
fn client_mistakes_get_4xx_never_a_crash() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    let server = Server::start(&reg, &["--body-limit", "20000"], None)?;
    server.wait_healthy()?;
    let inf = &server.inference;
    let (pngs, _, h, w) = test_images()?;
    let url = format!("{inf}/predictions/fashion");
    let expect = |got: (u16, Value), status: u16, kind: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert_eq!(got.1["type"], kind, "{}", got.1);
        assert_eq!(got.1["code"], status);
    };
    expect(
        post(&url, "image/png", b"this is not an image")?,
        400,
        "BadRequestException",
    );
    expect(
        post(&url, "image/png", &pngs[0][..pngs[0].len() / 2])?,
        400,
        "BadRequestException",
    );
    expect(post(&url, "image/png", b"")?, 400, "BadRequestException");
    expect(
        post(&url, "application/json", &pngs[0])?,
        415,
        "BadRequestException",
    );
    expect(
        post(&url, "multipart/form-data; boundary=x", b"--x\r\n\r\n")?,
        400,
        "BadRequestException",
    );
    expect(
        post(&format!("{inf}/predictions/nope"), "image/png", &pngs[0])?,
        404,
        "ModelNotFoundException",
    );
    expect(
        post(
            &format!("{inf}/predictions/fashion/7"),
            "image/png",
            &pngs[0],
        )?,
        404,
        "ModelVersionNotFoundException",
    );
    expect(
        post(
            &format!("{inf}/predictions/fashion/x1"),
            "image/png",
            &pngs[0],
        )?,
        404,
        "ModelVersionNotFoundException",
    );
    expect(
        post(
            &format!("{inf}/predictions/..%2F..%2Fetc"),
            "image/png",
            &pngs[0],
        )?,
        404,
        "ModelNotFoundException",
    );
    expect(
        post(&url, "image/png", &vec![0u8; 30_000])?,
        413,
        "PayloadTooLargeException",
    );
    expect(
        get(&format!("{inf}/no/such/path"))?,
        404,
        "ResourceNotFoundException",
    );
    expect(get(&url)?, 405, "MethodNotAllowedException");

    // KServe: errors as {"error"}.
    let v2 = format!("{inf}/v2/models/fashion/infer");
    for bad in [
        json!({"inputs": [{"name": "input", "shape": [1, 1, h + 1, w], "datatype": "FP32", "data": vec![0.0; (h + 1) * w]}]}),
        json!({"inputs": [{"name": "input", "shape": [2, 1, h, w], "datatype": "FP32", "data": vec![0.0; h * w]}]}),
        json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%%not base64"]}]}),
        json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}),
        json!({"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]}),
        json!({"inputs": []}),
    ] {
        let (s, body) = post(&v2, "application/json", bad.to_string().as_bytes())?;
        assert_eq!(s, 400, "{bad} -> {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (s, body) = post(&v2, "application/json", b"{not json")?;
    assert!(s == 400 && body["error"].is_string(), "{body}");
    let (s, body) = post(
        &format!("{inf}/v2/models/nope/infer"),
        "application/json",
        b"{}",
    )?;
    assert!(s == 404 && body["error"].is_string(), "{body}");

    // Still healthy and serving after all that.
    assert_eq!(post(&url, "image/png", &pngs[0])?.0, 200);
    server.stop()
}

fn registry_cli(args: &[&str], reg: &Path) -> Result<(i32, String)> {
    let out = Command::new(BIN)
        .args(&args[..1])
        .arg("--registry")
        .arg(reg)
        .args(&args[1..])
        .env("RUST_LOG", "off")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

#[test]
fn registry_versions_promotion_and_hot_swap() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    let r = run();
    // Register through the binary: v1 promoted, v2 and v3 not.
    for (i, promote) in [(1, true), (2, false), (3, false)] {
        let mut args = vec!["register", "--name", "fashion"];
        if promote {
            args.push("--promote");
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .arg("--registry")
            .arg(&reg)
            .arg("--model")
            .arg(&r.train)
            .arg("--index")
            .arg(&r.index)
            .arg("--eval")
            .arg(&r.eval)
            .env("RUST_LOG", "off");
        let out = cmd.output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("version {i}")));
    }
    let (code, listing) = registry_cli(&["list", "fashion"], &reg)?;
    assert_eq!(code, 0, "{listing}");
    assert_eq!(
        listing.lines().filter(|l| l.contains("default")).count(),
        1,
        "{listing}"
    );

    let token = "s3cret-token";
    let server = Server::start(&reg, &[], Some(token))?;
    server.wait_healthy()?;
    let default_version = |s: &Server| -> Result<String> {
        Ok(
            get(&format!("{}/models/fashion", s.management))?.1[0]["modelVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(default_version(&server)?, "1");

    // Promote through the CLI: the running server follows within a few seconds.
    assert_eq!(registry_cli(&["promote", "fashion", "2"], &reg)?.0, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while default_version(&server)? != "2" {
        assert!(
            Instant::now() < until,
            "the server never picked up the promotion"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // set-default needs the token; with it, the swap is immediate and recorded in the registry.
    let m = &server.management;
    let put = |url: &str, auth: Option<&str>| -> Result<(u16, Value)> {
        let mut req = agent().put(url);
        if let Some(a) = auth {
            req = req.header("Authorization", &format!("Bearer {a}"));
        }
        answer(req.send_empty())
    };
    assert_eq!(
        put(&format!("{m}/models/fashion/3/set-default"), None)?.0,
        401
    );
    assert_eq!(
        put(&format!("{m}/models/fashion/3/set-default"), Some("wrong"))?.0,
        401
    );
    let (s, body) = put(&format!("{m}/models/fashion/3/set-default"), Some(token))?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(default_version(&server)?, "3");
    assert_eq!(
        mlops_core::artifact::registry::read_pointer(&reg, "fashion")?.default,
        Some(3)
    );
    assert_eq!(
        put(&format!("{m}/models/fashion/9/set-default"), Some(token))?.0,
        404
    );

    // The default cannot be removed; another version can, and is then gone.
    let delete = |url: &str| {
        answer(
            agent()
                .delete(url)
                .header("Authorization", &format!("Bearer {token}"))
                .call(),
        )
    };
    let (s, body) = delete(&format!("{m}/models/fashion/3"))?;
    assert_eq!(
        (s, body["type"].clone()),
        (403, json!("InvalidModelVersionException"))
    );
    assert_eq!(delete(&format!("{m}/models/fashion/1"))?.0, 200);
    let (pngs, _, _, _) = test_images()?;
    assert_eq!(
        post(
            &format!("{}/predictions/fashion/1", server.inference),
            "image/png",
            &pngs[0]
        )?
        .0,
        404
    );
    assert_eq!(
        post(
            &format!("{}/predictions/fashion/2", server.inference),
            "image/png",
            &pngs[0]
        )?
        .0,
        200
    );

    // A version whose file changed is refused at load, naming the file; the old default serves on.
    let tampered = reg.join("fashion/1/labels.npy");
    let mut bytes = std::fs::read(&tampered)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tampered, bytes)?;
    let (s, body) = put(&format!("{m}/models/fashion/1/set-default"), Some(token))?;
    assert_eq!(s, 500, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("labels.npy"),
        "{body}"
    );
    assert_eq!(default_version(&server)?, "3");
    assert_eq!(get(&format!("{}/ping", server.inference))?.0, 200);
    server.stop()?;

    // Rollback returns to the version promoted before (history 1, 2, 3 -> 1, 2); prune keeps
    // the default (2) and the version a rollback would return to (1).
    let (code, out) = registry_cli(&["rollback", "fashion"], &reg)?;
    assert!(code == 0 && out.contains("version 2"), "{out}");
    let (code, out) = registry_cli(&["prune", "fashion", "--keep", "0"], &reg)?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        mlops_core::artifact::registry::versions(&reg, "fashion")?,
        vec![1, 2]
    );
    let (code, out) = registry_cli(&["promote", "fashion", "1"], &reg)?;
    assert!(code == 1 && out.contains("fashion/1"), "{out}");
    Ok(())
}

#[test]
fn registering_a_rejected_model_needs_force() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let r = run();
    // An evaluation whose gate rejects (min accuracy above anything reachable).
    let eval = tmp.path().join("eval-strict");
    let embed = r.eval.parent().unwrap().join("first-embed");
    mlops_eval::run(&mlops_eval::EvalConfig {
        index: r.index.clone(),
        embeddings: embed,
        out: eval.clone(),
        gate: mlops_eval::GatePolicy {
            min_accuracy: 1.1,
            ..Default::default()
        },
        ..Default::default()
    })?;
    let reg = tmp.path().join("registry");
    let config = RegisterConfig {
        model: r.train.clone(),
        index: r.index.clone(),
        eval: eval.clone(),
        registry: reg.clone(),
        name: "strict".into(),
        ..Default::default()
    };
    let err = registry::register(&config).unwrap_err().to_string();
    assert!(
        err.contains("rejected") && err.contains("decision.json"),
        "{err}"
    );
    assert!(mlops_core::artifact::registry::versions(&reg, "strict")?.is_empty());
    let v = registry::register(&RegisterConfig {
        force: true,
        ..config
    })?;
    assert!(v.forced && v.version == 1);
    assert_eq!(
        mlops_core::artifact::registry::read_pointer(&reg, "strict")?.default,
        None,
        "registering never promotes by itself"
    );
    // Concurrent registrations get distinct versions and leave a consistent registry.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let reg = reg.clone();
            std::thread::spawn(move || register(&reg, false))
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect::<Result<_>>()?;
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(
        mlops_core::artifact::registry::versions(&reg, "fashion")?,
        vec![1, 2, 3, 4]
    );
    Ok(())
}

#[test]
fn package_writes_a_torchserve_archive_and_kubernetes_manifests() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    let out = tmp.path().join("package");
    mlops_deploy::package::run(&mlops_deploy::package::PackageConfig {
        registry: reg.clone(),
        name: "fashion".into(),
        out: out.clone(),
        ..Default::default()
    })?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(out.join("fashion.mar"))?)?;
    let mut names: Vec<String> = zip.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "MAR-INF/MANIFEST.json",
            "classes.json",
            "classifier.json",
            "handler.py",
            "index.faiss",
            "labels.npy",
            "model.json",
            "model.pt",
            "requirements.txt"
        ]
    );
    let manifest: Value = serde_json::from_reader(zip.by_name("MAR-INF/MANIFEST.json")?)?;
    assert_eq!(manifest["model"]["modelName"], "fashion");
    assert_eq!(manifest["model"]["serializedFile"], "model.pt");
    assert_eq!(manifest["model"]["handler"], "handler.py");
    assert_eq!(manifest["runtime"], "python");
    let mut model = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("model.pt")?, &mut model)?;
    assert_eq!(
        mlops_core::sha256_bytes(&model),
        mlops_core::sha256_file(&reg.join("fashion/1/model.pt"))?
    );
    let props = std::fs::read_to_string(out.join("config.properties"))?;
    assert!(props.contains("load_models=fashion.mar"), "{props}");
    for (file, kind) in [
        ("deployment.yaml", "Deployment"),
        ("service.yaml", "Service"),
        ("pvc.yaml", "PersistentVolumeClaim"),
        ("prometheus-rules.yaml", "ConfigMap"),
    ] {
        let doc: Value =
            serde_norway::from_str(&std::fs::read_to_string(out.join("k8s").join(file))?)?;
        assert_eq!(doc["kind"], kind, "{file}");
    }
    let dep: Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("k8s/deployment.yaml"))?)?;
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/v2/health/live");
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    let args = c["args"].to_string();
    assert!(args.contains("drift.max_low_share=0.25"), "{args}");
    mlops_core::Manifest::load(&out)?.verify_outputs(&out)?;
    prometheus_rules_check_and_fire(&out.join("k8s/prometheus-rules.yaml"))
}

/// The rule file in the rules ConfigMap passes `promtool check rules`, and promtool's rule unit
/// test shows the drift alert firing a minute after the server's judgement turns to alert, for
/// that version only, and not for a one-scrape spike.
fn prometheus_rules_check_and_fire(configmap: &Path) -> Result<()> {
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(configmap)?)?;
    assert_eq!(doc["kind"], "ConfigMap");
    let rules = doc["data"][mlops_deploy::package::RULES_FILE]
        .as_str()
        .context("the rule file")?;
    let Some(promtool) = mlops_core::testing::promtool() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), rules)?;
    let check = Command::new(&promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let alert = |version: u64| {
        format!(
            r#"{{__name__="mlops_drift", figure="alert", model_name="fashion", model_version="{version}"}}"#
        )
    };
    let test = format!(
        r#"rule_files: [rules.yaml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: '{}'
        values: '0 0 1 1 1 1 1 0 0'
      - series: '{}'
        values: '0 1 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 1m
        alertname: MlopsModelDrift
        exp_alerts: []
      - eval_time: 2m
        alertname: MlopsModelDrift
        exp_alerts:
          - exp_labels: {{severity: warning, model_name: fashion, model_version: "1"}}
            exp_annotations:
              summary: "Model fashion version 1: recent requests do not look like its test set"
              description: 'The share of requests unlike every gallery image (mlops_drift{{figure="low_similarity_share"}}) or the shift of the predicted classes (figure="class_shift") passed its limit (figure="max_low_share", "max_class_shift") over the server''s drift window.'
      - eval_time: 4m
        alertname: MlopsModelDrift
        exp_alerts: []
"#,
        alert(1),
        alert(2)
    );
    std::fs::write(dir.path().join("test.yaml"), test)?;
    let run = Command::new(&promtool)
        .args(["test", "rules", "test.yaml"])
        .current_dir(dir.path())
        .output()?;
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(())
}

/// The sum of the samples of Prometheus metric `name` whose labels contain all of `labels`.
fn metric(server: &Server, name: &str, labels: &[&str]) -> Result<f64> {
    t(server.0.metric(name, labels))
}

/// POSTs `image` to `url` (with `X-Request-Id: id` when given); the answer's status, the
/// version that answered (`X-Model-Version`) and the predicted class.
fn predict_as(url: &str, image: &[u8], id: Option<&str>) -> Result<(u16, String, i64)> {
    let mut req = agent().post(url).header("Content-Type", "image/png");
    if let Some(id) = id {
        req = req.header("X-Request-Id", id);
    }
    let mut r = req.send(image)?;
    let version = r
        .headers()
        .get("x-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
    Ok((
        r.status().as_u16(),
        version,
        body["class"].as_i64().unwrap_or(-1),
    ))
}

/// Waits until `f` holds (the server follows the registry within its watch interval).
fn eventually(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while !f()? {
        if Instant::now() > until {
            bail!("never: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn canary_and_shadow_rollouts_split_and_compare_traffic() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    assert_eq!(register(&reg, true)?, 1);
    assert_eq!(register_candidate(&reg)?, 2);
    let server = Server::start(&reg, &[], None)?;
    server.wait_healthy()?;
    let url = format!("{}/predictions/fashion", server.inference);
    let rollout = |s: &Server| -> Result<Value> {
        Ok(get(&format!("{}/models/fashion", s.management))?.1[0]["rollout"].clone())
    };
    let (pngs, _, _, _) = test_images()?;

    // A 10 % canary: 2,000 requests without an id, then 2,000 with distinct ids.
    let (code, out) = registry_cli(&["promote", "fashion", "2", "--canary", "10"], &reg)?;
    assert_eq!(code, 0, "{out}");
    eventually("the canary starts", || {
        Ok(rollout(&server)?["mode"] == "canary")
    })?;
    let answered_by: [std::cell::Cell<usize>; 3] = Default::default();
    let ask = |i: usize, id: Option<&str>| -> Result<String> {
        let (status, version, _) = predict_as(&url, &pngs[i % pngs.len()], id)?;
        assert_eq!(status, 200);
        let slot = &answered_by[version.parse::<usize>()?];
        slot.set(slot.get() + 1);
        Ok(version)
    };
    for i in 0..2000 {
        ask(i, None)?;
    }
    let without_ids = answered_by[2].get();
    assert!(
        (160..=240).contains(&without_ids),
        "{without_ids} of 2000 went to the canary"
    );
    let mut by_id = 0;
    for i in 0..2000 {
        let id = format!("client-{i}");
        let version = ask(i, Some(&id))?;
        by_id += usize::from(version == "2");
        if i < 50 {
            assert_eq!(
                ask(0, Some(&id))?,
                version,
                "the same id goes the same way: {id}"
            );
        }
    }
    assert!(
        (160..=240).contains(&by_id),
        "{by_id} of 2000 ids went to the canary"
    );
    let counted = |role: &str, v: &str| {
        metric(
            &server,
            "mlops_routed_requests_total",
            &[
                &format!("role=\"{role}\""),
                &format!("model_version=\"{v}\""),
            ],
        )
    };
    assert_eq!(counted("canary", "2")? as usize, answered_by[2].get());
    assert_eq!(counted("default", "1")? as usize, answered_by[1].get());

    // The candidate cannot be removed while it is rolled out.
    let (s, body) = answer(
        agent()
            .delete(&format!("{}/models/fashion/2", server.management))
            .call(),
    )?;
    assert_eq!(s, 403, "{body}");

    // Shadow: the default answers every request; the candidate predicts beside it.
    assert_eq!(
        registry_cli(&["promote", "fashion", "2", "--shadow"], &reg)?.0,
        0
    );
    eventually("the shadow starts", || {
        Ok(rollout(&server)?["mode"] == "shadow")
    })?;
    let n = 300;
    let mut agree = 0;
    for i in 0..n {
        let image = &pngs[i % pngs.len()];
        let (_, version, class) = predict_as(&url, image, None)?;
        assert_eq!(version, "1", "the default answers during a shadow rollout");
        let (_, _, candidate_class) = predict_as(&format!("{url}/2"), image, None)?;
        agree += usize::from(class == candidate_class);
    }
    let shadowed = |outcome: &str| {
        metric(
            &server,
            "mlops_shadow_predictions_total",
            &[&format!("outcome=\"{outcome}\""), "candidate_version=\"2\""],
        )
    };
    eventually("every shadow prediction is counted", || {
        Ok(shadowed("agree")? + shadowed("disagree")? + shadowed("failed")? >= n as f64)
    })?;
    assert_eq!(shadowed("failed")?, 0.0);
    assert_eq!(
        shadowed("agree")? as usize,
        agree,
        "shadow agreement is the pinned answers'"
    );
    // (The fixture's classes are easy: the two seeds may agree everywhere. Disagreement is
    // counted in xtask's paired_gate test, between two real Fashion-MNIST models.)
    let ratio = metric(
        &server,
        "mlops_shadow_agreement_ratio",
        &["default_version=\"1\""],
    )?;
    assert!((ratio - agree as f64 / n as f64).abs() < 1e-9, "{ratio}");

    // Finish: the candidate becomes the default.
    let (code, out) = registry_cli(&["promote", "fashion", "--finish"], &reg)?;
    assert!(code == 0 && out.contains("version 2"), "{out}");
    eventually("the candidate is the default", || {
        Ok(predict_as(&url, &pngs[0], None)?.1 == "2" && rollout(&server)?.is_null())
    })?;
    // A rollback during a rollout abandons it and keeps the default.
    assert_eq!(
        registry_cli(&["promote", "fashion", "1", "--canary", "50"], &reg)?.0,
        0
    );
    let (_, listing) = registry_cli(&["list", "fashion"], &reg)?;
    assert!(listing.contains("rolling out: canary at 50%"), "{listing}");
    let (code, out) = registry_cli(&["rollback", "fashion"], &reg)?;
    assert!(
        code == 0 && out.contains("abandoned") && out.contains("version 2 stays"),
        "{out}"
    );
    eventually("the rollout ends", || Ok(rollout(&server)?.is_null()))?;
    assert!(
        (0..20).all(|i| predict_as(&url, &pngs[i % pngs.len()], None).is_ok_and(|a| a.1 == "2"))
    );
    server.stop()
}

/// Clients posting `image` to `url` until `until`: steady ones, and one that gives up on each
/// request after 2 ms (its requests stay queued on the inference thread after the client is
/// gone). Returns the statuses of every answer received; refused and dropped connections
/// (after the server stopped accepting) are not answers.
fn load(url: &str, image: &[u8], until: Instant) -> std::thread::JoinHandle<Vec<u16>> {
    let (url, image) = (url.to_string(), image.to_vec());
    std::thread::spawn(move || {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (url, image) = (url.clone(), image.clone());
                std::thread::spawn(move || {
                    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
                    if i == 0 {
                        config = config.timeout_global(Some(Duration::from_millis(2)));
                    }
                    let agent: ureq::Agent = config.build().into();
                    let mut statuses = Vec::new();
                    while Instant::now() < until {
                        let sent = agent
                            .post(&url)
                            .header("Content-Type", "image/png")
                            .send(&image[..]);
                        if let Ok(r) = sent {
                            statuses.push(r.status().as_u16());
                        }
                    }
                    statuses
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_default())
            .collect()
    })
}

#[test]
fn sigterm_under_load_or_just_after_it_exits_zero_every_time() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    // A model slow enough (tens of ms a batch) that an inference is running when the signal
    // comes: the crash needed one running while the process exited.
    let [train, index, eval] = deep_stages(tmp.path(), &run().data, "deep", 0, 4);
    registry::register(&RegisterConfig {
        model: train,
        index,
        eval,
        registry: reg.clone(),
        name: "fashion".into(),
        promote: true,
        force: false,
    })?;
    let (pngs, _, _, _) = test_images()?;
    for round in 0..20 {
        for during in [true, false] {
            // Alternately libtorch's own thread pool at work (one inference thread of one
            // libtorch thread per core: with one thread alone the crash did not show) and the
            // default's inference thread per core, several of them computing at the signal.
            let threads: &[&str] = if round % 2 == 0 {
                &["--workers", "1", "--threads", "0"]
            } else {
                &["--threads", "0"]
            };
            let server = Server::start(&reg, threads, None)?;
            server.wait_healthy()?;
            let url = format!("{}/predictions/fashion", server.inference);
            let clients = load(
                &url,
                &pngs[round % pngs.len()],
                Instant::now() + Duration::from_millis(300),
            );
            if during {
                std::thread::sleep(Duration::from_millis(150));
                server.stop()?;
                let statuses = clients.join().unwrap();
                assert!(
                    statuses.iter().all(|&s| s == 200),
                    "round {round}, during: {statuses:?}"
                );
            } else {
                let statuses = clients.join().unwrap();
                assert!(
                    !statuses.is_empty() && statuses.iter().all(|&s| s == 200),
                    "round {round}: {statuses:?}"
                );
                server.stop()?;
            }
        }
    }
    Ok(())
}

/// Clients nobody here wrote (`tests/clients.py`): tritonclient.http with its defaults
/// (binary tensor data both ways), JSON tensors, one binary output, an error; requests with a
/// browser's mixed-case multipart boundary, a quoted one and its own `files=`; the KServe v1
/// route. Each gets the classes the TorchServe endpoint gives for the same images.
#[test]
fn stock_clients_get_the_torchserve_answers() -> Result<()> {
    let Some(python) = mlops_core::testing::python() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    let server = Server::start(&reg, &[], None)?;
    server.wait_healthy()?;
    let (pngs, _, _, _) = test_images()?;
    let mut paths = Vec::new();
    let (mut labels, mut classes) = (Vec::new(), Vec::new());
    for (i, png) in pngs.iter().take(8).enumerate() {
        let path = tmp.path().join(format!("{i}.png"));
        std::fs::write(&path, png)?;
        paths.push(path);
        let (s, answer) = post(
            &format!("{}/predictions/fashion", server.inference),
            "image/png",
            png,
        )?;
        assert_eq!(s, 200, "{answer}");
        labels.push(answer["label"].clone());
        classes.push(answer["class"].clone());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&server.inference)
        .arg("fashion")
        .args(&paths)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout)?;
    let (labels, classes) = (Value::Array(labels), Value::Array(classes));
    assert_eq!(got["live"], true, "{got}");
    assert_eq!(got["ready"], true, "{got}");
    assert_eq!(got["model_ready"], true, "{got}");
    assert_eq!(
        got["server"]["extensions"],
        json!(["binary_tensor_data"]),
        "{got}"
    );
    assert_eq!(got["metadata"]["name"], "fashion", "{got}");
    let d = &got["triton_default"];
    assert_eq!(
        (&d["labels"], &d["classes"], &d["id"]),
        (&labels, &classes, &json!("req-7")),
        "{got}"
    );
    let j = &got["triton_json"];
    assert_eq!((&j["labels"], &j["classes"]), (&labels, &classes), "{got}");
    let c = &got["triton_class_only"];
    assert_eq!(
        (&c["labels"], &c["classes"]),
        (&Value::Null, &classes),
        "{got}"
    );
    assert!(
        got["triton_error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-model")),
        "{got}"
    );
    let n = &got["triton_neighbors"];
    let k = EvalDir::open(&run().eval)?.summary.k;
    assert_eq!(n["shape"], json!([8, k]), "{got}");
    assert_eq!(n["similarities_descending"], true, "{got}");
    assert_eq!(n["thumbnails_png"], true, "{got}");
    for (row, label) in n["labels"]
        .as_array()
        .context("labels")?
        .iter()
        .zip(labels.as_array().context("labels")?)
    {
        assert!(
            row.as_array().is_some_and(|r| r.contains(label)),
            "{label} among the voters {row}"
        );
    }
    for form in ["webkit", "quoted", "requests"] {
        assert_eq!(got["multipart"][form], labels, "{form}: {got}");
    }
    assert_eq!(got["v1"], labels, "{got}");
    server.stop()
}

/// `/explanations/{model}` answers the prediction with its evidence: the k neighbours that voted
/// (their labels make the vote's winner), each with the gallery image it stands for as a PNG
/// thumbnail (the very pixels the data stage stored), and every class's vote share.
#[test]
fn explanations_show_the_neighbours_that_decided() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    let server = Server::start(&reg, &[], None)?;
    server.wait_healthy()?;
    let data = DataDir::open(&run().data)?;
    let (gallery, _) = data.read_role(Role::Gallery)?;
    let [_, h, w] = data.summary.image_shape;
    let (pngs, _, _, _) = test_images()?;
    let k = EvalDir::open(&run().eval)?.summary.k;
    for png in pngs.iter().take(10) {
        let (s, predicted) = post(
            &format!("{}/predictions/fashion", server.inference),
            "image/png",
            png,
        )?;
        assert_eq!(s, 200);
        let (s, e) = post(
            &format!("{}/explanations/fashion", server.inference),
            "image/png",
            png,
        )?;
        assert_eq!(s, 200, "{e}");
        assert_eq!(e["label"], predicted["label"], "{e}");
        let neighbours = e["neighbors"].as_array().context("neighbors")?;
        assert_eq!(neighbours.len(), k, "{e}");
        // The winner of the vote is the class with the largest share.
        let votes = e["votes"].as_array().context("votes")?;
        let best = votes
            .iter()
            .max_by(|a, b| {
                a["share"]
                    .as_f64()
                    .partial_cmp(&b["share"].as_f64())
                    .unwrap()
            })
            .context("a vote")?;
        assert_eq!(best["label"], e["label"], "{e}");
        let total: f64 = votes.iter().filter_map(|v| v["share"].as_f64()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{e}");
        for n in neighbours {
            let id = n["id"].as_u64().context("id")? as usize;
            let url = n["thumbnail"].as_str().context("thumbnail")?;
            let b64 = url
                .strip_prefix("data:image/png;base64,")
                .context("a PNG data URL")?;
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
            let img = image::load_from_memory(&bytes)?.to_luma8();
            assert_eq!((img.height() as usize, img.width() as usize), (h, w));
            let stored: Vec<u8> = gallery
                .index_axis(ndarray::Axis(0), id)
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect();
            assert_eq!(img.into_raw(), stored, "thumbnail of gallery image {id}");
        }
    }
    server.stop()
}

/// `RegisteredModel` classifies in process as the server answers: for every test image the
/// same class, label, score and neighbours as `/predictions` (default and pinned version), the
/// vote shares of `/explanations`, and eval's accuracy; its errors name the model and problem.
#[test]
fn registered_model_classifies_as_the_server_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    assert_eq!(register(&reg, true)?, 1);
    assert_eq!(register_candidate(&reg)?, 2);
    // Three inference threads per version, whatever the cores: batches computed at once.
    let server = Server::start(&reg, &["--workers", "3"], None)?;
    server.wait_healthy()?;
    let (pngs, labels, _, _) = test_images()?;
    let eval = EvalDir::open(&run().eval)?;
    let inf = &server.inference;

    let model = RegisteredModel::open(&reg, "fashion", None)?;
    assert_eq!((model.name(), model.version()), ("fashion", 1));
    let per_class = &eval.summary.metrics.per_class;
    let classes: Vec<&str> = per_class.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(model.classes(), classes.as_slice());
    // Twice over, so the call spans more than one of the server's batches.
    let twice: Vec<&[u8]> = pngs.iter().chain(&pngs).map(Vec::as_slice).collect();
    let predictions = model.classify(&twice)?;
    assert_eq!(predictions.len(), 2 * pngs.len());
    for (a, b) in predictions[..pngs.len()]
        .iter()
        .zip(&predictions[pngs.len()..])
    {
        assert_eq!(a.class, b.class);
        assert!((a.score - b.score).abs() < 1e-6, "{a:?} {b:?}");
    }
    let correct = predictions[..pngs.len()]
        .iter()
        .zip(&labels)
        .filter(|(p, &l)| p.class as i64 == l)
        .count();
    assert_eq!(
        correct as f64 / labels.len() as f64,
        eval.summary.metrics.accuracy
    );
    for (png, p) in pngs.iter().zip(&predictions) {
        let (s, served) = post(&format!("{inf}/predictions/fashion"), "image/png", png)?;
        assert_eq!(s, 200, "{served}");
        same_prediction(&model, p, &served)?;
        let (s, e) = post(&format!("{inf}/explanations/fashion"), "image/png", png)?;
        assert_eq!(s, 200, "{e}");
        let shares: Vec<f64> = e["votes"]
            .as_array()
            .context("votes")?
            .iter()
            .filter_map(|v| v["share"].as_f64())
            .collect();
        let ours = model.vote_shares(p);
        assert_eq!(ours.len(), shares.len(), "{e}");
        assert!(
            ours.iter().zip(&shares).all(|(a, b)| (a - b).abs() < 1e-6),
            "{ours:?} {e}"
        );
    }

    // Eight clients at once get the answers one client gets, over all three threads; and
    // threads sharing one RegisteredModel classify at once as one thread alone does.
    std::thread::scope(|scope| -> Result<()> {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (model, pngs, predictions) = (&model, &pngs, &predictions);
                scope.spawn(move || -> Result<()> {
                    for i in (c..pngs.len()).step_by(8) {
                        let url = format!("{inf}/predictions/fashion");
                        let (s, served) = post(&url, "image/png", &pngs[i])?;
                        assert_eq!(s, 200, "{served}");
                        same_prediction(model, &predictions[i], &served)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let callers: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| model.classify(&twice[..pngs.len()])))
            .collect();
        for c in clients {
            c.join().expect("a client panicked")?;
        }
        for c in callers {
            let theirs = c.join().expect("a caller panicked")?;
            for (a, b) in theirs.iter().zip(&predictions) {
                assert_eq!(a.class, b.class);
                assert!((a.score - b.score).abs() < 1e-6, "{a:?} {b:?}");
            }
        }
        Ok(())
    })?;
    let (_, desc) = get(&format!("{}/models/fashion", server.management))?;
    assert_eq!(
        desc[0]["workers"].as_array().map(Vec::len),
        Some(3),
        "{desc}"
    );

    // A named version is that version, as the server's pinned route answers it.
    let candidate = RegisteredModel::open(&reg, "fashion", Some(2))?;
    assert_eq!(candidate.version(), 2);
    let some: Vec<&[u8]> = pngs.iter().take(8).map(Vec::as_slice).collect();
    for (png, p) in some.iter().zip(candidate.classify(&some)?) {
        let (s, served) = post(&format!("{inf}/predictions/fashion/2"), "image/png", png)?;
        assert_eq!(s, 200, "{served}");
        same_prediction(&candidate, &p, &served)?;
    }
    server.stop()?;

    // Errors name the model and what is wrong.
    let message = |r: mlops_deploy::Result<RegisteredModel>| r.unwrap_err().to_string();
    let e = message(RegisteredModel::open(&reg, "nope", None));
    assert!(
        e.contains("nope") && e.contains("no registered version"),
        "{e}"
    );
    let e = message(RegisteredModel::open(&reg, "fashion", Some(9)));
    assert!(e.contains("fashion") && e.contains("no version 9"), "{e}");
    let unpromoted = tmp.path().join("unpromoted");
    register_candidate(&unpromoted)?;
    let e = message(RegisteredModel::open(&unpromoted, "fashion", None));
    assert!(e.contains("no default version"), "{e}");
    let e = model
        .classify(&[&pngs[0], b"not an image"])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("fashion version 1: image 1 cannot be decoded"),
        "{e}"
    );
    Ok(())
}

/// Asserts that `p` (from `model`) is the prediction the server answered as `served`.
fn same_prediction(
    model: &RegisteredModel,
    p: &mlops_deploy::Prediction,
    served: &Value,
) -> Result<()> {
    assert_eq!(served["class"].as_u64(), Some(p.class as u64), "{served}");
    assert_eq!(served["label"].as_str(), model.label(p.class), "{served}");
    let score = served["score"].as_f64().context("score")?;
    // Batches of other sizes may round the similarities (weighted votes) differently.
    assert!((score - p.score).abs() < 1e-6, "{score} vs {}", p.score);
    let neighbours = served["neighbors"].as_array().context("neighbors")?;
    assert_eq!(neighbours.len(), p.neighbours.len(), "{served}");
    for (n, ours) in neighbours.iter().zip(&p.neighbours) {
        assert_eq!(n["id"].as_u64(), Some(ours.id), "{served}");
        let sim = n["score"].as_f64().context("neighbour score")?;
        assert!((sim - f64::from(ours.score)).abs() < 1e-6, "{served}");
    }
    Ok(())
}

/// The inference listener's web page in headless Chromium (selenium): an image uploaded through
/// the page's file input shows the class the API gives, the vote rows, and the neighbours'
/// thumbnails, at a phone's width, with labelled inputs.
#[test]
fn the_web_page_classifies_an_uploaded_image_in_a_real_browser() -> Result<()> {
    let Some(python) = browser_python() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    let server = Server::start(&reg, &[], None)?;
    server.wait_healthy()?;
    let (pngs, _, _, _) = test_images()?;
    let image = tmp.path().join("upload.png");
    std::fs::write(&image, &pngs[3])?;
    let (_, predicted) = post(
        &format!("{}/predictions/fashion", server.inference),
        "image/png",
        &pngs[3],
    )?;
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser.py"))
        .arg(&server.inference)
        .arg(&image)
        .arg(tmp.path().join("page.png"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown["models"], json!(["fashion"]), "{shown}");
    assert_eq!(shown["error"], "", "{shown}");
    assert_eq!(shown["label"], predicted["label"], "{shown}");
    assert_eq!(shown["version"], "1", "{shown}");
    let thumbnails = shown["thumbnails"].as_array().context("thumbnails")?;
    assert_eq!(
        thumbnails.len(),
        EvalDir::open(&run().eval)?.summary.k,
        "{shown}"
    );
    assert!(thumbnails.iter().all(|t| t["loaded"] == true), "{shown}");
    assert_eq!(shown["votes"], 3, "one row per class: {shown}");
    assert_eq!(shown["fits_width"], true, "{shown}");
    assert_eq!(shown["inputs_labelled"], true, "{shown}");
    assert!(std::fs::metadata(tmp.path().join("page.png"))?.len() > 1000);
    server.stop()
}

/// The management listener's registry page in headless Chromium: the versions with their views
/// (report, confusion matrix), a change refused without the token and shown as an error, then
/// made with it: "Make default" and "Roll back" move what `GET /models/{name}` answers.
#[test]
fn the_registry_page_promotes_and_rolls_back_in_a_real_browser() -> Result<()> {
    let Some(python) = browser_python() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("registry");
    register(&reg, true)?;
    register_candidate(&reg)?;
    let token = "page-t0ken";
    let server = Server::start(&reg, &[], Some(token))?;
    server.wait_healthy()?;
    let m = &server.management;
    // The views the page links to.
    let mut report = agent()
        .get(&format!("{m}/models/fashion/1/files/report.html"))
        .call()?;
    assert_eq!(report.status(), 200);
    assert!(report.body_mut().read_to_string()?.contains("<html"));
    assert_eq!(get(&format!("{m}/models/fashion/1/files/model.pt"))?.0, 404);
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry_page.py"))
        .args([m.as_str(), "fashion", token])
        .arg(tmp.path().join("registry.png"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(seen["rows"], 2, "{seen}");
    assert_eq!(
        seen["views"],
        json!(["report", "confusion matrix"]),
        "{seen}"
    );
    assert_eq!(seen["before"], "1", "{seen}");
    assert!(
        seen["refused"]
            .as_str()
            .is_some_and(|e| e.contains("Bearer")),
        "{seen}"
    );
    assert_eq!(seen["after_refusal"], "1", "{seen}");
    assert_eq!(seen["promoted"], "2", "{seen}");
    assert_eq!(seen["rolled_back"], "1", "{seen}");
    server.stop()
}
