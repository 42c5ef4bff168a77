//! KServe's APIs: the Open Inference Protocol (v2: health, metadata, inference with JSON or
//! binary tensor data, see [`v2`]) and v1's `:predict` with base64 instances.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use mlops_core::artifact::registry as layout;
use mlops_index::Prediction;
use serde_json::{json, Value};

use super::dispatch::{
    infer_routed, prediction_json, preprocess, resolve, route, MODEL_VERSION_HEADER,
};
use super::errors::{body_error, not_found, ApiError, ApiResult};
use super::Shared;
use crate::serve::state::State;
use crate::serve::v2;
use crate::serve::worker::LoadedVersion;

pub(super) async fn v2_ready(AxumState(state): Shared) -> Response {
    let ready = state.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

pub(super) async fn v2_model(
    AxumState(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let loaded = resolve(&state, &name, None)
        .await
        .map_err(ApiError::kserve)?;
    let versions = layout::versions(state.registry(), &name).unwrap_or_default();
    Ok(Json(v2_metadata(&loaded, &versions)))
}

pub(super) async fn v2_model_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let loaded = resolve(&state, &name, Some(&version))
        .await
        .map_err(ApiError::kserve)?;
    Ok(Json(v2_metadata(&loaded, &[loaded.version])))
}

fn v2_metadata(loaded: &LoadedVersion, versions: &[u64]) -> Value {
    let [c, h, w] = loaded.description.input_shape;
    json!({
        "name": loaded.name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "pytorch_torchscript",
        "inputs": [
            { "name": "image", "datatype": "BYTES", "shape": [-1] },
            { "name": "input", "datatype": "FP32", "shape": [-1, c, h, w] },
        ],
        "outputs": [
            { "name": "label", "datatype": "BYTES", "shape": [-1] },
            { "name": "class", "datatype": "INT64", "shape": [-1] },
            { "name": "score", "datatype": "FP32", "shape": [-1] },
            // Sent only when named: the neighbours that voted, nearest first.
            { "name": "neighbor_ids", "datatype": "INT64", "shape": [-1, -1] },
            { "name": "neighbor_labels", "datatype": "BYTES", "shape": [-1, -1] },
            { "name": "neighbor_similarities", "datatype": "FP32", "shape": [-1, -1] },
            { "name": "neighbor_thumbnails", "datatype": "BYTES", "shape": [-1, -1] },
        ],
    })
}

pub(super) async fn v2_model_ready(AxumState(state): Shared, Path(name): Path<String>) -> Response {
    match state.model_ready(&name) {
        None => ApiError::model_not_found(&name).kserve().into_response(),
        Some(ready) => ready_answer(&name, ready),
    }
}

pub(super) async fn v2_model_version_ready(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match resolve(&state, &name, Some(&version)).await {
        // A version that resolves is loaded, so warmed up.
        Ok(_) => ready_answer(&name, true),
        Err(e) => e.kserve().into_response(),
    }
}

fn ready_answer(name: &str, ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "name": name, "ready": ready }))).into_response()
}

pub(super) async fn v2_infer_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    v2_infer(state, name, None, headers, body)
        .await
        .map_err(ApiError::kserve)
}

pub(super) async fn v2_infer_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    v2_infer(state, name, Some(version), headers, body)
        .await
        .map_err(ApiError::kserve)
}

/// KServe v2 inference (JSON, or JSON and binary tensor data, see [`v2`]): one input, either
/// `BYTES` (encoded images) or an `FP32` tensor of the model's input shape `[n, c, h, w]`
/// (already preprocessed).
async fn v2_infer(
    state: Arc<State>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let arrived = Instant::now();
    // An unknown model or version is a 404 whatever the body holds.
    resolve(&state, &name, version.as_deref()).await?;
    let body = body.map_err(body_error)?;
    let header_length = headers.get(v2::HEADER_LENGTH).and_then(|v| v.to_str().ok());
    let request = v2::parse(&body, header_length).map_err(ApiError::bad_request)?;
    // The protocol's request id routes a canary; the header does for clients that set one.
    let request_id = request
        .id_text()
        .or_else(|| headers.get("x-request-id").and_then(|v| v.to_str().ok()));
    let route = route(&state, &name, version.as_deref(), request_id).await?;
    let loaded = &route.serve;
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::bad_request(
            "expected exactly one input tensor: image (BYTES, encoded images) or input (FP32)",
        ));
    };
    let n = match &input.data {
        v2::Data::Bytes(items) => items.len(),
        v2::Data::Fp32(_) => input.shape.first().copied().unwrap_or(0),
    };
    let _counted = loaded.track(n);
    let images = match &input.data {
        v2::Data::Bytes(items) => v2_bytes(loaded, items).await?,
        v2::Data::Fp32(values) => v2_fp32(loaded, &input.shape, values)?,
    };
    let answers = futures_util::future::join_all(
        images
            .into_iter()
            .map(|pixels| infer_routed(&state, &route, pixels, arrived)),
    )
    .await;
    let predictions: Vec<Prediction> = answers.into_iter().collect::<ApiResult<_>>()?;
    state
        .metrics
        .observe_route(&loaded.name, loaded.version, route.role, predictions.len());
    let outputs = v2_outputs(loaded, &request, &predictions);
    v2_response(loaded, &request, outputs)
}

/// The outputs of a v2 answer: label, class and score per image, and the neighbours' when the
/// request names them.
fn v2_outputs(
    loaded: &LoadedVersion,
    request: &v2::Request,
    predictions: &[Prediction],
) -> Vec<v2::Output> {
    let classes = &loaded.description.classes;
    let mut outputs = vec![
        v2::Output::vector(
            "label",
            v2::OutData::Bytes(
                predictions
                    .iter()
                    .map(|p| classes.get(p.class).cloned().unwrap_or_default())
                    .collect(),
            ),
        ),
        v2::Output::vector(
            "class",
            v2::OutData::Int64(predictions.iter().map(|p| p.class as i64).collect()),
        ),
        v2::Output::vector(
            "score",
            v2::OutData::Fp32(predictions.iter().map(|p| p.score as f32).collect()),
        ),
    ];
    outputs.extend(neighbour_outputs(loaded, request, predictions));
    outputs
}

/// The v2 answer: JSON, or JSON and binary tensor data when the request asked for binary
/// outputs, with the headers that say which.
fn v2_response(
    loaded: &LoadedVersion,
    request: &v2::Request,
    outputs: Vec<v2::Output>,
) -> ApiResult<Response> {
    let encoded = v2::encode(&loaded.name, loaded.version, request, outputs)
        .map_err(ApiError::bad_request)?;
    let mut response = encoded.body.into_response();
    let h = response.headers_mut();
    h.insert(MODEL_VERSION_HEADER, loaded.version.into());
    match encoded.header_length {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                "application/octet-stream".parse().expect("valid"),
            );
            h.insert(v2::HEADER_LENGTH, n.into());
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("valid"),
            );
        }
    }
    Ok(response)
}

/// The explanation outputs (`[n, k]` each: the neighbours that voted, nearest first), computed
/// only when the request names them; missing neighbours are padded with id -1.
fn neighbour_outputs(
    loaded: &LoadedVersion,
    request: &v2::Request,
    predictions: &[Prediction],
) -> Vec<v2::Output> {
    const NAMES: [&str; 4] = [
        "neighbor_ids",
        "neighbor_labels",
        "neighbor_similarities",
        "neighbor_thumbnails",
    ];
    if !NAMES.iter().any(|n| v2::asks_for(request, n)) {
        return Vec::new();
    }
    let k = predictions
        .iter()
        .map(|p| p.neighbours.len())
        .max()
        .unwrap_or(0);
    let shape = vec![predictions.len(), k];
    let classes = &loaded.description.classes;
    let (mut ids, mut labels, mut sims, mut thumbs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let wants_thumbs = v2::asks_for(request, NAMES[3]);
    for p in predictions {
        for i in 0..k {
            match p.neighbours.get(i) {
                Some(n) => {
                    ids.push(n.id as i64);
                    labels.push(classes.get(n.class).cloned().unwrap_or_default());
                    sims.push(n.score);
                    if wants_thumbs {
                        let png = loaded.gallery.as_ref().and_then(|g| g.png(n.id));
                        thumbs.push(png.unwrap_or_default());
                    }
                }
                None => {
                    ids.push(-1);
                    labels.push(String::new());
                    sims.push(f32::NAN);
                    thumbs.push(Vec::new());
                }
            }
        }
    }
    let output = |name, data| v2::Output {
        name,
        shape: shape.clone(),
        data,
        on_request: true,
    };
    vec![
        output(NAMES[0], v2::OutData::Int64(ids)),
        output(NAMES[1], v2::OutData::Bytes(labels)),
        output(NAMES[2], v2::OutData::Fp32(sims)),
        output(NAMES[3], v2::OutData::Blobs(thumbs)),
    ]
}

/// Most images in one v2 request.
const MAX_BATCH: usize = 1024;

async fn v2_bytes(loaded: &Arc<LoadedVersion>, items: &[Vec<u8>]) -> ApiResult<Vec<Vec<f32>>> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "BYTES input holds {} images: send 1..={MAX_BATCH}",
            items.len()
        )));
    }
    let mut images = Vec::with_capacity(items.len());
    for (i, bytes) in items.iter().enumerate() {
        images.push(
            preprocess(loaded, Bytes::from(bytes.clone()))
                .await
                .map_err(|e| ApiError::bad_request(format!("element {i}: {}", e.message)))?,
        );
    }
    Ok(images)
}

fn v2_fp32(loaded: &LoadedVersion, shape: &[usize], values: &[f32]) -> ApiResult<Vec<Vec<f32>>> {
    let [c, h, w] = loaded.description.input_shape;
    let ok = shape.len() == 4 && shape[1..] == [c, h, w] && (1..=MAX_BATCH).contains(&shape[0]);
    if !ok {
        return Err(ApiError::bad_request(format!(
            "FP32 input must have shape [n, {c}, {h}, {w}] with n in 1..={MAX_BATCH}, got {shape:?}"
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::bad_request("FP32 data must be finite numbers"));
    }
    Ok(values.chunks(c * h * w).map(<[f32]>::to_vec).collect())
}

/// `GET /v2`: the server's metadata (a required endpoint of the protocol).
pub(super) async fn v2_server() -> Json<Value> {
    Json(json!({
        "name": "mlops-deploy",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// KServe v1: `POST /v1/models/{name}:predict` with `{"instances": [...]}`, each instance an
/// encoded image as base64 (`"..."`, `{"b64": "..."}` or `{"image": {"b64": "..."}}`).
pub(super) async fn v1_predict(
    AxumState(state): Shared,
    Path(spec): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Some(name) = spec.strip_suffix(":predict") else {
        return Err(not_found().await);
    };
    let arrived = Instant::now();
    let body = body.map_err(body_error)?;
    let request: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request is not valid JSON: {e}")).kserve()
    })?;
    let instances = request
        .get("instances")
        .and_then(Value::as_array)
        .filter(|i| (1..=MAX_BATCH).contains(&i.len()))
        .ok_or_else(|| {
            ApiError::bad_request(format!("expected \"instances\": 1..={MAX_BATCH} images"))
                .kserve()
        })?;
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let route = route(&state, name, None, request_id)
        .await
        .map_err(ApiError::kserve)?;
    let loaded = &route.serve;
    let _counted = loaded.track(instances.len());
    let mut images = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        let bytes = v1_image(i, instance)?;
        images.push(
            preprocess(loaded, Bytes::from(bytes)).await.map_err(|e| {
                ApiError::bad_request(format!("instance {i}: {}", e.message)).kserve()
            })?,
        );
    }
    let answers = futures_util::future::join_all(
        images
            .into_iter()
            .map(|pixels| infer_routed(&state, &route, pixels, arrived)),
    )
    .await;
    let predictions: Vec<Prediction> = answers
        .into_iter()
        .collect::<ApiResult<_>>()
        .map_err(ApiError::kserve)?;
    state
        .metrics
        .observe_route(&loaded.name, loaded.version, route.role, predictions.len());
    let answer: Vec<Value> = predictions
        .iter()
        .map(|p| prediction_json(loaded, p))
        .collect();
    Ok((
        [(MODEL_VERSION_HEADER, loaded.version.to_string())],
        Json(json!({ "predictions": answer })),
    )
        .into_response())
}

/// The encoded image of v1 instance `i`: base64 as `"..."`, `{"b64": "..."}` or
/// `{"image": {"b64": "..."}}`.
fn v1_image(i: usize, instance: &Value) -> ApiResult<Vec<u8>> {
    let text = instance
        .as_str()
        .or_else(|| instance.get("b64").and_then(Value::as_str))
        .or_else(|| instance.get("image").and_then(|v| v.get("b64")).and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "instance {i}: expected a base64 image: \"...\", {{\"b64\": ...}} or {{\"image\": {{\"b64\": ...}}}}"
            ))
            .kserve()
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            ApiError::bad_request(format!("instance {i} is not valid base64: {e}")).kserve()
        })
}
