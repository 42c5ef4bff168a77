//! The stage images for real (podman, built by `cargo xtask images` before the tests; its tag
//! comes in `MLOPS_IMAGE_TAG`): the tiny pipeline run with every stage in its container gives
//! exactly the native run's model, embeddings and accuracy and reuses its cache; a stage that
//! fails in its container fails the run with the stage's own message; the deploy image serves
//! what the native server serves.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

mod common;
use common::record;

/// The tag of the images `cargo xtask test` built, as a prerequisite.
fn image_tag() -> Option<String> {
    common::release_binaries()?;
    mlops_core::testing::prerequisite(
        "stage images",
        std::env::var("MLOPS_IMAGE_TAG").ok(),
        "cargo xtask test builds them with `cargo xtask images` and sets MLOPS_IMAGE_TAG",
    )
}

fn podman_pipeline(tmp: &Path, run: &str, tag: &str) -> Command {
    let mut cmd = common::tiny_pipeline(tmp, run);
    cmd.args(["--engine", "podman", "--image-tag", tag]);
    cmd
}

fn sha256(path: &Path) -> Result<String> {
    mlops_core::sha256_file(path).with_context(|| format!("cannot hash {}", path.display()))
}

/// sha256 of the arrays, weights, models, indexes and charts among the outputs the stage's
/// manifest lists (its JSON files name the run's own directories and times).
fn outputs(dir: &Path) -> Result<Vec<(String, String)>> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let mut files = Vec::new();
    for e in manifest["outputs"].as_array().context("no outputs")? {
        let path = e["path"].as_str().context("output without a path")?;
        let data = [".npy", ".pt", ".safetensors", ".faiss", ".png"];
        if !data.iter().any(|ext| path.ends_with(ext)) {
            continue;
        }
        files.push((path.to_string(), sha256(&dir.join(path))?));
    }
    Ok(files)
}

#[test]
fn every_stage_in_its_container_equals_the_native_run_and_the_deploy_image_serves() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;
    ensure!(
        common::tiny_pipeline(t, "native").status()?.success(),
        "the native run failed"
    );
    let started = Instant::now();
    let out = podman_pipeline(t, "podman", &tag)
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "the podman run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = started.elapsed();
    let (native, podman) = (record(t, "native")?, record(t, "podman")?);
    assert_eq!(podman["status"], "succeeded");
    assert_eq!(podman["decision"], native["decision"]);
    assert_eq!(
        podman["metrics"]["accuracy"], native["metrics"]["accuracy"],
        "podman {podman}\nnative {native}"
    );
    assert_eq!(podman["registered_version"], 1);
    let (nd, pd) = (t.join("runs/native"), t.join("runs/podman"));
    assert_eq!(
        sha256(&pd.join("train/model.pt"))?,
        sha256(&nd.join("train/model.pt"))?
    );
    for stage in ["data", "train", "embed", "index", "eval"] {
        // Same bytes under the same names (manifests differ only in their paths and times).
        assert_eq!(
            outputs(&pd.join(stage))?,
            outputs(&nd.join(stage))?,
            "{stage} outputs differ"
        );
    }
    // Files belong to whoever ran the pipeline, not to the image's user.
    let meta = std::fs::metadata(pd.join("train/model.pt"))?;
    // SAFETY: getuid cannot fail.
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), unsafe {
        libc::getuid()
    });

    // Started again: every stage from the cache, keyed by the image ids.
    ensure!(podman_pipeline(t, "podman", &tag).status()?.success());
    let again = record(t, "podman")?;
    let stages = again["stages"].as_array().context("no stages")?;
    assert!(stages.iter().all(|s| s["cache"] == "hit"), "{again}");
    let keys = |r: &Value| -> Vec<String> {
        r["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(keys(&again), keys(&podman));
    eprintln!("podman run {first:?}");

    serves_like_the_native_server(&t.join("registry-podman"), &tag)?;
    kubernetes_manifests_name_the_images_and_validate(t, &t.join("registry-podman"), &tag)
}

/// `mlops-deploy package` writes Kubernetes manifests naming the deploy image by the scheme of
/// `cargo xtask images` (by default the name the Kubeflow pipeline uses), and they pass
/// kubernetes-validate (the API's own schemas, offline, strict).
fn kubernetes_manifests_name_the_images_and_validate(
    t: &Path,
    registry: &Path,
    tag: &str,
) -> Result<()> {
    let deploy = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("mlops-deploy");
    let image_of = |out: &Path| -> Result<String> {
        let text = std::fs::read_to_string(out.join("k8s/deployment.yaml"))?;
        let doc: Value = serde_norway::from_str(&text)?;
        Ok(doc["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .context("no image")?
            .to_string())
    };
    let package = |out: &Path, image: Option<&str>| -> Result<()> {
        let mut cmd = Command::new(&deploy);
        cmd.arg("package")
            .arg("--registry")
            .arg(registry)
            .args(["--name", "src", "--out"])
            .arg(out)
            .stderr(Stdio::null());
        if let Some(image) = image {
            cmd.args(["--image", image]);
        }
        ensure!(cmd.status()?.success(), "mlops-deploy package failed");
        Ok(())
    };
    let default = t.join("package-default");
    package(&default, None)?;
    let pipeline = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubeflow/pipeline.yaml"),
    )?;
    let image = image_of(&default)?;
    assert!(
        pipeline.contains(&format!("image: {image}\n")),
        "the Kubeflow pipeline names no {image}"
    );
    let local = t.join("package-local");
    let reference = format!("localhost/mlops-deploy:{tag}");
    package(&local, Some(&reference))?;
    assert_eq!(image_of(&local)?, reference);
    let exists = Command::new("podman")
        .args(["image", "exists", &reference])
        .status()?;
    assert!(exists.success(), "no image {reference}");
    let Some(python) = mlops_core::testing::python() else {
        return Ok(());
    };
    let manifests: Vec<_> = std::fs::read_dir(local.join("k8s"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    let validate = |files: &[std::path::PathBuf]| -> Result<std::process::Output> {
        Ok(Command::new(python.with_file_name("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.33.0"])
            .args(files)
            .output()?)
    };
    let out = validate(&manifests)?;
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a misspelt field in a copy is caught.
    let broken = t.join("broken.yaml");
    let text = std::fs::read_to_string(local.join("k8s/deployment.yaml"))?;
    std::fs::write(&broken, text.replacen("replicas:", "replicaz:", 1))?;
    assert!(!validate(&[broken])?.status.success());
    Ok(())
}

/// The deploy image serving `registry` (mounted read-only) answers `/ping` Healthy and
/// predicts exactly what the native server predicts for the same images.
fn serves_like_the_native_server(registry: &Path, tag: &str) -> Result<()> {
    let port = free_port()?;
    let name = format!("mlops-serve-test-{}", std::process::id());
    let image = format!("localhost/mlops-deploy:{tag}");
    let started = Command::new("podman")
        .args(["run", "--detach", "--rm", "--name", &name])
        .arg(format!("--publish=127.0.0.1:{port}:8080"))
        .arg(format!("--volume={}:/registry:ro", registry.display()))
        .arg(&image)
        .args([
            "serve",
            "--registry",
            "/registry",
            "--inference-addr",
            "0.0.0.0:8080",
        ])
        .output()?;
    ensure!(
        started.status.success(),
        "podman run {image}: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _container = Container(name.clone());
    let native_port = free_port()?;
    let deploy = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("mlops-deploy");
    let native = Command::new(deploy)
        .arg("serve")
        .arg("--registry")
        .arg(registry)
        .arg(format!("--inference-addr=127.0.0.1:{native_port}"))
        .arg(format!("--management-addr=127.0.0.1:{}", free_port()?))
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()?))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _native = Child(native);
    let container = format!("http://127.0.0.1:{port}");
    let here = format!("http://127.0.0.1:{native_port}");
    for base in [&container, &here] {
        wait_healthy(base).with_context(|| {
            let logs = Command::new("podman").args(["logs", &name]).output();
            format!(
                "{base} never became healthy; container log:\n{}",
                logs.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            )
        })?;
    }
    let (status, ping) = get(&format!("{container}/ping"))?;
    assert_eq!((status, ping["status"].as_str()), (200, Some("Healthy")));
    // A few images of each kind the tiny data set has, as PNG.
    for (i, class) in [0usize, 1, 2, 0, 2].iter().enumerate() {
        let mut pixels = vec![(i * 7) as u8; 28 * 28];
        for x in 0..28 {
            pixels[(class * 7 + 3) * 28 + x] = 230;
        }
        let png = png(&pixels);
        let (s1, from_container) = post(&format!("{container}/predictions/src"), &png)?;
        let (s2, from_native) = post(&format!("{here}/predictions/src"), &png)?;
        assert_eq!((s1, s2), (200, 200), "{from_container} / {from_native}");
        assert_eq!(from_container, from_native);
    }
    Ok(())
}

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time=2", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_healthy(base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(get(&format!("{base}/ping")), Ok((200, _))) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no answer in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
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

fn post(url: &str, body: &[u8]) -> Result<(u16, Value)> {
    answer(
        agent()
            .post(url)
            .header("Content-Type", "image/png")
            .send(body),
    )
}

fn png(pixels: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(28, 28, pixels.to_vec()).expect("28x28 pixels");
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png encodes");
    out
}

#[test]
fn a_stage_failing_in_its_container_fails_the_run_with_its_own_message() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_truncated_idx(&t.join("src"))?;
    let stage_error = |out: &std::process::Output| -> String {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("train-images-idx3-ubyte"))
            .map(|l| l.replace(&t.display().to_string(), "TMP"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let native = common::tiny_pipeline(t, "bad-native")
        .stderr(Stdio::piped())
        .output()?;
    let podman = podman_pipeline(t, "bad-podman", &tag)
        .stderr(Stdio::piped())
        .output()?;
    assert_eq!(native.status.code(), Some(1));
    assert_eq!(podman.status.code(), Some(1), "{podman:?}");
    let message = stage_error(&native);
    assert!(!message.is_empty(), "{native:?}");
    assert_eq!(stage_error(&podman), message);
    let text = String::from_utf8_lossy(&podman.stderr);
    assert!(
        text.contains("stage data failed (exit status: 1)"),
        "{text}"
    );
    assert_eq!(record(t, "bad-podman")?["status"], "failed");
    Ok(())
}

/// Containers whose name mentions `needle` (running or not).
fn containers_named(needle: &str) -> Result<Vec<String>> {
    let out = Command::new("podman")
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.contains(needle))
        .map(str::to_string)
        .collect())
}

#[test]
fn a_podman_run_killed_in_training_resumes_to_the_same_model() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;
    // Long enough that the killed run's container is still training when the run resumes.
    let longer = ["--set", "train.epochs=80"];
    ensure!(
        podman_pipeline(t, "straight", &tag)
            .args(longer)
            .status()?
            .success(),
        "the uninterrupted run failed"
    );
    // SIGKILL to the runner and its podman client together: nothing forwards a signal to the
    // container, which trains on; the next start must remove it and resume.
    let mut cmd = podman_pipeline(t, "killed", &tag);
    cmd.args(longer);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let checkpoint = t.join("runs/killed/train/checkpoints/state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint.is_file() {
        ensure!(
            child.try_wait()?.is_none(),
            "the run ended before a checkpoint"
        );
        ensure!(Instant::now() < deadline, "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()?;
    child.wait()?;
    let orphans = containers_named("mlops-killed-train-")?;
    assert_eq!(orphans.len(), 1, "the killed run's container: {orphans:?}");
    // The resumed run removes the orphan before it trains: never two trainers in one directory.
    let mut resumed = podman_pipeline(t, "killed", &tag).args(longer).spawn()?;
    let mut most = 0;
    let status = loop {
        if let Some(status) = resumed.try_wait()? {
            break status;
        }
        most = most.max(containers_named("mlops-killed-train-")?.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "the resumed run failed");
    assert_eq!(most, 1, "two train containers ran at once");
    let (straight, resumed) = (record(t, "straight")?, record(t, "killed")?);
    assert!(
        resumed["stages"][2]["status"] == "ran",
        "the train stage was not run again: {resumed}"
    );
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(
        sha256(&t.join("runs/killed/train/model.pt"))?,
        sha256(&t.join("runs/straight/train/model.pt"))?,
        "straight {straight}\nresumed {resumed}"
    );
    assert!(
        containers_named("mlops-killed-")?.is_empty(),
        "a container was left behind"
    );
    Ok(())
}
