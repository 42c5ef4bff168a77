//! Safe promotion on real models. The gate compares like with like: a retrained model is judged
//! against the deployed one on the same test images (the embed stage embeds them with the
//! deployed model too; eval classifies them with the deployed index and classifier) with
//! McNemar's exact test. On a small slice of Fashion-MNIST, a deliberately worse recipe is
//! refused and a better one passes, with the figures in `decision.json`. Then the server runs
//! the two registered models: the earlier one as a shadow beside the default (their agreement
//! exported), Fashion-MNIST test images raise no drift alert, and images of another kind raise
//! one (metric and Slack message) within the window.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use mlops_core::testing::server::{self, ServerProcess};
use serde_json::Value;

mod common;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The first `per_class` images of each class of `split` (`train` or `t10k`) as IDX files.
fn write_slice(src: &Path, out: &Path, split: &str, per_class: usize) -> Result<()> {
    let images = mlops_data::idx::read_idx(
        &common::find_idx(src, &format!("{split}-images-idx3-ubyte"))?,
        3,
    )?;
    let labels = mlops_data::idx::read_idx(
        &common::find_idx(src, &format!("{split}-labels-idx1-ubyte"))?,
        1,
    )?;
    let frame = images.dims[1] * images.dims[2];
    let (mut pixels, mut kept) = (Vec::new(), Vec::new());
    let mut counts = [0usize; 10];
    for (i, &label) in labels.data.iter().enumerate() {
        let class = label as usize;
        if class < 10 && counts[class] < per_class {
            counts[class] += 1;
            pixels.extend_from_slice(&images.data[i * frame..(i + 1) * frame]);
            kept.push(label);
        }
    }
    let n = kept.len() as u32;
    std::fs::create_dir_all(out)?;
    let mut f = std::fs::File::create(out.join(format!("{split}-images-idx3-ubyte")))?;
    f.write_all(&[0, 0, 8, 3])?;
    for d in [n, images.dims[1] as u32, images.dims[2] as u32] {
        f.write_all(&d.to_be_bytes())?;
    }
    f.write_all(&pixels)?;
    let mut f = std::fs::File::create(out.join(format!("{split}-labels-idx1-ubyte")))?;
    f.write_all(&[0, 0, 8, 1])?;
    f.write_all(&n.to_be_bytes())?;
    f.write_all(&kept)?;
    Ok(())
}

fn decision(t: &Path, run: &str) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        t.join("runs").join(run).join("eval/decision.json"),
    )?)?)
}

#[test]
fn a_worse_retrain_is_refused_and_a_better_one_passes_on_the_same_images() -> Result<()> {
    if common::release_binaries().is_none() {
        return Ok(());
    }
    let how = "Debian's dataset-fashion-mnist; cargo xtask setup installs it";
    let found = Path::new(FASHION_MNIST).is_dir().then_some(());
    if mlops_core::testing::prerequisite("Fashion-MNIST", found, how).is_none() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let src = t.join("fmnist-slice");
    write_slice(Path::new(FASHION_MNIST), &src, "train", 200)?;
    write_slice(Path::new(FASHION_MNIST), &src, "t10k", 60)?;
    let registry = t.join("registry");
    let run = |name: &str, sets: &[&str]| -> Result<Value> {
        let mut cmd = common::pipeline_in(t, name, &src, &registry);
        for set in [
            "train.arch=\"res\"",
            "train.embedding_dim=32",
            "train.ema=0.0",
            "train.test_time_flip=false",
            "train.augment.max_shift=0",
            "train.augment.hflip=false",
            "eval.gate.min_accuracy=0.0",
        ]
        .iter()
        .chain(sets)
        {
            cmd.args(["--set", set]);
        }
        let out = cmd.stderr(Stdio::piped()).output()?;
        ensure!(
            out.status.success(),
            "run {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        common::record(t, name)
    };
    let first = run("first", &["train.epochs=4"])?;
    assert_eq!(first["registered_version"], 1, "{first}");

    // One epoch at a hundredth of the learning rate: clearly worse on the same images.
    let worse = run("worse", &["train.epochs=1", "train.optimizer.lr=0.001"])?;
    let d = decision(t, "worse")?;
    assert_eq!(worse["decision"], "reject", "{d}");
    let paired = &d["paired"];
    assert_eq!(paired["images"], 600, "{d}");
    assert!(
        paired["deployed_only"].as_u64() > paired["candidate_only"].as_u64(),
        "{d}"
    );
    assert!(paired["p_value"].as_f64().context("p")? < 0.05, "{d}");
    assert!(
        d["reasons"]
            .to_string()
            .contains("worse than the deployed model"),
        "{d}"
    );

    // Longer training of the same recipe: not worse on the same images, so it passes.
    let better = run("better", &["train.epochs=8"])?;
    let d = decision(t, "better")?;
    assert_eq!(better["decision"], "deploy", "{d}");
    assert_eq!(better["registered_version"], 2, "{better}");
    assert!(d["paired"]["p_value"].as_f64().is_some(), "{d}");
    assert_eq!(
        d["paired"]["deployed_accuracy"], first["metrics"]["accuracy"],
        "the deployed model's accuracy on the shared images is its own eval's: {d}"
    );
    shadow_and_drift(&src, &registry)
}

/// The slice's test images as PNG files.
fn test_pngs(src: &Path) -> Result<Vec<Vec<u8>>> {
    let images = mlops_data::idx::read_idx(&src.join("t10k-images-idx3-ubyte"), 3)?;
    let (h, w) = (images.dims[1] as u32, images.dims[2] as u32);
    images
        .data
        .chunks((h * w) as usize)
        .map(|p| png(image::GrayImage::from_raw(w, h, p.to_vec()).context("frame")?))
        .collect()
}

fn png(img: image::GrayImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

/// `n` images of another kind than clothing, 28x28: outlined and filled geometric shapes and
/// strokes on a dark or noisy background (what a client of a clothing classifier might send by
/// mistake: drawings, diagrams, scans).
fn foreign_pngs(n: usize) -> Result<Vec<Vec<u8>>> {
    let mut rand = common::noise(7);
    (0..n)
        .map(|i| {
            let mut img = image::GrayImage::new(28, 28);
            let noisy = i % 3 == 0;
            for p in img.pixels_mut() {
                p.0[0] = if noisy { rand() / 3 } else { 0 };
            }
            let (cx, cy) = (6 + rand() as i32 % 16, 6 + rand() as i32 % 16);
            let r = 3 + rand() as i32 % 6;
            for y in 0..28i32 {
                for x in 0..28i32 {
                    let (dx, dy) = (x - cx, y - cy);
                    let inside = match i % 4 {
                        0 => dx * dx + dy * dy <= r * r,
                        1 => (dx * dx + dy * dy - r * r).abs() <= r,
                        2 => dx.abs() <= r && dy.abs() <= r / 2,
                        _ => (dx - dy).abs() <= 1 || (dx + dy).abs() <= 1,
                    };
                    if inside {
                        img.put_pixel(x as u32, y as u32, image::Luma([200 + rand() % 56]));
                    }
                }
            }
            png(img)
        })
        .collect()
}

/// A webhook on loopback that records every message and answers 200.
fn webhook() -> Result<(String, Arc<Mutex<Vec<String>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/services/T0/B0/drift", listener.local_addr()?);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(&stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    Ok((url, seen))
}

fn agent() -> ureq::Agent {
    server::agent()
}

/// The sum of metric `name`'s samples whose labels include all of `labels`.
fn metric(server: &ServerProcess, name: &str, labels: &[&str]) -> Result<f64> {
    server.metric(name, labels).map_err(|e| anyhow!(e))
}

fn predict(server: &ServerProcess, model: &str, image: &[u8]) -> Result<Value> {
    let mut r = agent()
        .post(&format!("{}/predictions/{model}", server.inference))
        .header("Content-Type", "image/png")
        .send(image)?;
    ensure!(r.status() == 200, "status {}", r.status());
    Ok(serde_json::from_str(&r.body_mut().read_to_string()?)?)
}

fn shadow_and_drift(src: &Path, registry: &Path) -> Result<()> {
    let bins: PathBuf = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .parent()
        .unwrap()
        .into();
    let model = "fmnist-slice";
    let deploy = |args: &[&str]| -> Result<()> {
        let out = Command::new(bins.join("mlops-deploy"))
            .args(&args[..1])
            .arg("--registry")
            .arg(registry)
            .args(&args[1..])
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    // The earlier model predicts beside the default from the start.
    deploy(&["promote", model, "1", "--shadow"])?;
    let (url, slack) = webhook()?;
    let log = registry.with_extension("serve.log");
    let mut cmd = server::serve_command(&bins.join("mlops-deploy"), registry);
    cmd.args(["--threads", "1"])
        .env("SLACK_WEBHOOK_URL", &url)
        .env("RUST_LOG", "info");
    let server = ServerProcess::start(cmd, &log).map_err(|e| anyhow!(e))?;
    server
        .wait_healthy(Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    let alert = |s: &ServerProcess| {
        metric(
            s,
            "mlops_drift",
            &["figure=\"alert\"", "model_version=\"2\""],
        )
    };

    // In distribution: the test images, twice the window's minimum and more. No alert.
    let fashion = test_pngs(src)?;
    for image in fashion.iter().take(300) {
        predict(&server, model, image)?;
    }
    let low = metric(
        &server,
        "mlops_drift",
        &["figure=\"low_similarity_share\"", "model_version=\"2\""],
    )?;
    let shift = metric(
        &server,
        "mlops_drift",
        &["figure=\"class_shift\"", "model_version=\"2\""],
    )?;
    eprintln!("in distribution: low-similarity share {low:.3}, class shift {shift:.3}");
    ensure!(
        alert(&server)? == 0.0,
        "no alert on Fashion-MNIST (low {low}, shift {shift})"
    );
    ensure!(
        metric(
            &server,
            "mlops_drift",
            &["figure=\"requests\"", "model_version=\"2\""]
        )? == 200.0
    );

    // The shadow: every request compared, and two real models do disagree somewhere.
    let until = Instant::now() + Duration::from_secs(30);
    let shadowed = |o: &str| {
        metric(
            &server,
            "mlops_shadow_predictions_total",
            &[&format!("outcome=\"{o}\"")],
        )
    };
    while shadowed("agree")? + shadowed("disagree")? < 300.0 {
        ensure!(Instant::now() < until, "shadow predictions missing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (agree, disagree) = (shadowed("agree")?, shadowed("disagree")?);
    eprintln!(
        "shadow: version 1 agrees with version 2 on {agree} of {}",
        agree + disagree
    );
    ensure!(
        disagree > 0.0 && agree > disagree,
        "agree {agree}, disagree {disagree}"
    );
    deploy(&["rollback", model])?;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let mut r = agent()
            .get(&format!("{}/models/{model}", server.management))
            .call()?;
        let described: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
        if described[0]["rollout"].is_null() {
            break;
        }
        ensure!(
            Instant::now() < until,
            "the shadow never ended: {described}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Another kind of image: the alert fires within the window, and Slack hears of it.
    let foreign = foreign_pngs(200)?;
    let mut fired = None;
    for (i, image) in foreign.iter().enumerate() {
        predict(&server, model, image)?;
        if alert(&server)? == 1.0 {
            fired = Some(i + 1);
            break;
        }
    }
    let Some(delay) = fired else {
        bail!(
            "no alert after 200 foreign images (low {}, shift {})",
            metric(
                &server,
                "mlops_drift",
                &["figure=\"low_similarity_share\"", "model_version=\"2\""]
            )?,
            metric(
                &server,
                "mlops_drift",
                &["figure=\"class_shift\"", "model_version=\"2\""]
            )?
        );
    };
    eprintln!("drift alert after {delay} foreign images (window 200)");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = slack.lock().unwrap().clone();
        if let Some(m) = messages.iter().find(|m| m.contains(":warning:")) {
            ensure!(m.contains(model) && m.contains("version 2"), "{m}");
            ensure!(messages.len() == 1, "one message per alert: {messages:?}");
            break;
        }
        ensure!(Instant::now() < until, "no Slack message: {messages:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
