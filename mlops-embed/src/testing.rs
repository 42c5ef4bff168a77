//! A model fixture for the tests of the stages after training (feature `test-support`).

use std::path::Path;

use mlops_core::artifact::model::{MODEL_DESCRIPTION_FILE, MODEL_FILE};
use mlops_core::artifact::{DataDir, ModelDescription, StageSummary, TrainSummary};
use mlops_core::{sha256_file, Manifest, OutputDir};
use tch::{nn, nn::Module, CModule, Device, Tensor};

use crate::Result;

/// Writes a train-stage directory as the contract describes it, without the training code: a
/// seeded random linear map of the pixels of `data`'s images, L2-normalised to 16 dimensions,
/// traced to TorchScript, with its description and manifest.
pub fn fixture_model(dir: &Path, data: &Path) -> Result<()> {
    fixture_model_seeded(dir, data, 0)
}

/// [`fixture_model`] with the map drawn from `seed`: another model of the same signature, which
/// classifies some images differently (a candidate to roll out beside the first).
pub fn fixture_model_seeded(dir: &Path, data: &Path, seed: i64) -> Result<()> {
    fixture_model_deep(dir, data, seed, 0)
}

/// [`fixture_model_seeded`] behind `layers` 3x3 convolutions of 32 channels (ReLU): a model
/// that takes real time per batch (tens of milliseconds for 32 images at 4 layers) through
/// the convolution kernels a trained network uses, for tests of what happens while an
/// inference is running.
pub fn fixture_model_deep(dir: &Path, data: &Path, seed: i64, layers: usize) -> Result<()> {
    let data = DataDir::open(data)?;
    let [c, h, w] = data.summary.image_shape;
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let channels = if layers == 0 { c } else { 32 };
    let conv = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    let hidden: Vec<nn::Conv2D> = (0..layers)
        .map(|i| {
            let inputs = if i == 0 { c } else { channels };
            nn::conv2d(
                vs.root() / format!("conv{i}"),
                inputs as i64,
                channels as i64,
                3,
                conv,
            )
        })
        .collect();
    let fc = nn::linear(
        vs.root() / "fc",
        (channels * h * w) as i64,
        16,
        Default::default(),
    );
    vs.freeze();
    let mut forward = |inputs: &[Tensor]| {
        let mut x = inputs[0].shallow_clone();
        for layer in &hidden {
            x = layer.forward(&x).relu();
        }
        let x = fc.forward(&x.flatten(1, -1));
        let norm = x
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12);
        vec![x / norm]
    };
    let example = Tensor::rand([4, c as i64, h as i64, w as i64], tch::kind::FLOAT_CPU);
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("Fixture", "forward", &[example], &mut forward)
    })?;
    write_model_dir(dir, &data, &module)
}

/// Writes `module` as a train-stage directory for `data`: `model.pt`, `model.json` and a
/// manifest, as the train stage would (no training behind it).
fn write_model_dir(dir: &Path, data: &DataDir, module: &CModule) -> Result<()> {
    let [c, h, w] = data.summary.image_shape;
    let mut out = OutputDir::create(dir)?;
    module.save(out.staged_path(MODEL_FILE))?;
    let description = ModelDescription {
        arch: "fixture".into(),
        input_shape: [c, h, w],
        embedding_dim: 16,
        normalization: data.summary.normalization,
        value_range: data.summary.value_range,
        classes: data.summary.classes.clone(),
        arcface: Default::default(),
        test_time_flip: false,
        epochs_trained: 0,
        best_epoch: 0,
        best_val_accuracy: 0.0,
        torch_version: mlops_torch::LIBTORCH_VERSION.into(),
        data_manifest_sha256: sha256_file(&data.dir.join(mlops_core::MANIFEST_FILE))?,
        teacher: None,
    };
    let mut manifest = Manifest::begin(TrainSummary::STAGE, "fixture", &());
    manifest.inputs = data.input_entries(std::iter::empty())?;
    manifest.outputs.push(out.adopt(MODEL_FILE)?);
    manifest
        .outputs
        .push(out.write_json(MODEL_DESCRIPTION_FILE, &description)?);
    manifest.summary = serde_json::to_value(TrainSummary {
        arch: "fixture".into(),
        epochs: 0,
        best_epoch: 0,
        best_val_accuracy: 0.0,
        devices: vec!["Cpu".into()],
        threads: 1,
        last: None,
        precision: "fp32".into(),
        cpu: String::new(),
    })
    .expect("plain data");
    out.commit(manifest)?;
    Ok(())
}
