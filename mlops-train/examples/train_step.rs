//! Training-step throughput of the stage's recipe on one fixed batch, one JSON line on stdout:
//! the Rust side of the GPU kit's comparison with PyTorch eager on the same device.
//!
//! ```text
//! cargo run --release -p mlops-train --example train_step -- ARCH BATCH STEPS PRECISION DEVICE
//! ```

use anyhow::{Context, Result};
use mlops_train::{timing::step_throughput, Arch, DeviceSpec, TrainConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, batch, steps, precision, device] = args.as_slice() else {
        anyhow::bail!("usage: train_step ARCH BATCH STEPS PRECISION DEVICE");
    };
    let arch: Arch = serde_json::from_value(serde_json::json!(arch)).context("ARCH")?;
    let spec: DeviceSpec = device.parse().map_err(anyhow::Error::msg)?;
    let device = spec.resolve()?[0];
    let batch: i64 = batch.parse().context("BATCH")?;
    let config = TrainConfig {
        arch,
        ..Default::default()
    };
    let t = step_throughput(
        &config,
        device,
        batch,
        5,
        steps.parse().context("STEPS")?,
        precision.parse().map_err(anyhow::Error::msg)?,
    )?;
    println!(
        "{}",
        serde_json::json!({"impl": "mlops-train", "img_per_s": t.images_per_second,
            "seconds": t.seconds, "device": format!("{device:?}"), "precision": precision,
            "arch": arch, "batch": batch})
    );
    Ok(())
}
