//! The three listeners' routes: inference (TorchServe and KServe v2), management, metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use mlops_core::artifact::registry as layout;
use mlops_core::artifact::VersionDir;
use mlops_index::Prediction;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::metrics::{Role, Shadowed};
use super::state::{Lookup, Route, State, Unload};
use super::v2;
use super::worker::{Job, LoadedVersion, Refused};

type Shared = AxumState<Arc<State>>;

/// An error answer: TorchServe's `{"code", "type", "message"}`, or KServe's `{"error"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    kserve: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            kserve: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
    }

    fn model_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ModelNotFoundException",
            format!("Model not found: {name}"),
        )
    }

    fn version_not_found(name: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ModelVersionNotFoundException",
            format!("Model version {version} does not exist for model {name}"),
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            message,
        )
    }

    /// The same error in KServe's shape.
    fn kserve(mut self) -> Self {
        self.kserve = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.kserve {
            json!({ "error": self.message })
        } else {
            json!({ "code": self.status.as_u16(), "type": self.kind, "message": self.message })
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Routes of the inference listener.
pub fn inference(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ping", get(ping))
        .route("/predictions/{name}", post(predict_default))
        .route("/predictions/{name}/{version}", post(predict_version))
        .route("/explanations/{name}", post(explain_default))
        .route("/explanations/{name}/{version}", post(explain_version))
        .route("/v2", get(v2_server))
        .route("/v1/models/{spec}", post(v1_predict))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(v2_model))
        .route("/v2/models/{name}/ready", get(v2_model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2_model_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2_model_version_ready),
        )
        .route("/v2/models/{name}/infer", post(v2_infer_default))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2_infer_version),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_limit,
        ))
        .with_state(state)
}

/// Routes of the management listener.
pub fn management(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(registry_page))
        .route("/models/{name}/rollback", post(rollback))
        .route("/models/{name}/{version}/files/{file}", get(version_file))
        .route("/models", get(list_models))
        .route("/models/{name}", get(describe_default))
        .route(
            "/models/{name}/{version}",
            get(describe_version).delete(unregister),
        )
        .route("/models/{name}/{version}/set-default", put(set_default))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        .with_state(state)
}

/// Routes of the metrics listener.
pub fn metrics(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|AxumState(s): Shared| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn count_errors(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        state.metrics.observe_error(status.as_u16());
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        "Requested resource is not found, please refer to API document.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowedException",
        "Requested method is not allowed, please refer to API document.",
    )
}

/// The page headers: no caching, and nothing but this server as a source.
fn page_headers() -> [(header::HeaderName, &'static str); 3] {
    [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
        ),
    ]
}

/// The web page of the management listener: the registry's models and versions with their
/// metrics, report, training curves and confusion matrix, which one is default, and buttons
/// to make a version the default or roll back (with the management token when one is set).
async fn registry_page() -> Response {
    (page_headers(), include_str!("ui/registry.html")).into_response()
}

/// The web page of the inference listener: choose, drop or paste an image, see the predicted
/// class, each class's vote share and the gallery images that voted. Plain HTML and one inline
/// script, built into the binary: nothing outside the machine is fetched.
async fn page(AxumState(state): Shared) -> Response {
    // Model names are restricted to [A-Za-z0-9._-] (layout::valid_name): nothing to escape.
    let options: String = state
        .names()
        .iter()
        .filter(|n| layout::valid_name(n))
        .map(|n| format!("<option>{n}</option>"))
        .collect();
    let html = include_str!("ui/index.html").replace("<!--MODELS-->", &options);
    (page_headers(), html).into_response()
}

async fn ping(AxumState(state): Shared) -> Response {
    if state.ready() {
        (StatusCode::OK, Json(json!({ "status": "Healthy" }))).into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "status": "Unhealthy" })),
        )
            .into_response()
    }
}

fn parse_version(name: &str, version: &str) -> ApiResult<u64> {
    version
        .parse::<u64>()
        .map_err(|_| ApiError::version_not_found(name, version))
}

/// The loaded version a request is for, or the matching 404.
async fn resolve(
    state: &Arc<State>,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Arc<LoadedVersion>> {
    if !layout::valid_name(name) {
        return Err(ApiError::model_not_found(name));
    }
    let v = version.map(|v| parse_version(name, v)).transpose()?;
    match state.lookup(name, v).await? {
        Lookup::Found(loaded) => Ok(loaded),
        Lookup::NoModel => Err(ApiError::model_not_found(name)),
        Lookup::NoVersion => match version {
            Some(v) => Err(ApiError::version_not_found(name, v)),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                format!("Model {name} has no default version loaded yet"),
            )),
        },
    }
}

async fn predict_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, None, headers, body, false).await
}

async fn predict_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, Some(version), headers, body, false).await
}

/// TorchServe's explanations route: the prediction with the gallery images that decided it.
async fn explain_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, None, headers, body, true).await
}

async fn explain_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, Some(version), headers, body, true).await
}

/// The header naming the version that answered.
const MODEL_VERSION_HEADER: &str = "x-model-version";

async fn predict(
    state: Arc<State>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    explain: bool,
) -> ApiResult<Response> {
    let arrived = Instant::now();
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let route = route(&state, &name, version.as_deref(), request_id).await?;
    let loaded = &route.serve;
    let _counted = loaded.track(1);
    let body = body.map_err(body_error)?;
    let image = image_from_request(&headers, body).await?;
    let pixels = preprocess(loaded, image).await?;
    let prediction = infer_routed(&state, &route, pixels, arrived).await?;
    state
        .metrics
        .observe_route(&loaded.name, loaded.version, route.role, 1);
    let answer = if explain {
        let vote = loaded.summary.classifier.vote;
        super::explain::explanation(
            &prediction,
            &loaded.description.classes,
            vote,
            loaded.gallery.as_ref(),
        )
    } else {
        prediction_json(loaded, &prediction)
    };
    Ok((
        [(MODEL_VERSION_HEADER, loaded.version.to_string())],
        Json(answer),
    )
        .into_response())
}

/// Where a request goes: the version named in the URL, or the model's routing (the default,
/// a canary's candidate for its share, a shadow beside the default).
async fn route(
    state: &Arc<State>,
    name: &str,
    version: Option<&str>,
    request_id: Option<&str>,
) -> ApiResult<Route> {
    if version.is_none() && layout::valid_name(name) {
        if let Some(route) = state.route(name, request_id) {
            return Ok(route);
        }
    }
    // A pinned version, or the 404/503 that an unroutable name gets.
    let serve = resolve(state, name, version).await?;
    Ok(Route {
        serve,
        role: Role::Pinned,
        shadow: None,
    })
}

/// [`infer`] on the route's version; with a shadow, the candidate then predicts the same image
/// off the client's path and the two classes are compared.
async fn infer_routed(
    state: &Arc<State>,
    route: &Route,
    pixels: Vec<f32>,
    arrived: Instant,
) -> ApiResult<Prediction> {
    let Some(candidate) = &route.shadow else {
        return infer(&route.serve, pixels, arrived).await;
    };
    let prediction = infer(&route.serve, pixels.clone(), arrived).await?;
    let (metrics, candidate) = (state.metrics.clone(), candidate.clone());
    let (name, default, class) = (
        route.serve.name.clone(),
        route.serve.version,
        prediction.class,
    );
    tokio::spawn(async move {
        let _counted = candidate.track(1);
        let outcome = match infer(&candidate, pixels, Instant::now()).await {
            Ok(p) if p.class == class => Shadowed::Agree,
            Ok(_) => Shadowed::Disagree,
            Err(_) => Shadowed::Failed,
        };
        metrics.observe_shadow(&name, default, candidate.version, outcome);
    });
    Ok(prediction)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "PayloadTooLargeException"
    } else {
        "BadRequestException"
    };
    ApiError::new(status, kind, rejection.body_text())
}

/// The image in a request: the raw body (an image content type, octet-stream or none), or the
/// multipart field `data`.
async fn image_from_request(headers: &HeaderMap, body: Bytes) -> ApiResult<Bytes> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The media type is case-insensitive, the boundary is not (RFC 7578, RFC 2046): browsers
    // send mixed-case boundaries ("----WebKitFormBoundaryAbC..."), so only the type is folded.
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let image = if media_type == "multipart/form-data" {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| ApiError::bad_request(format!("invalid multipart request: {e}")))?;
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut form = multer::Multipart::new(stream, boundary);
        let mut found = None;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart request: {e}")))?
        {
            if field.name() == Some("data") {
                found = Some(field.bytes().await.map_err(|e| {
                    ApiError::bad_request(format!("invalid multipart request: {e}"))
                })?);
                break;
            }
        }
        found.ok_or_else(|| ApiError::bad_request("multipart request has no field named data"))?
    } else if media_type.is_empty()
        || media_type.starts_with("image/")
        || media_type == "application/octet-stream"
    {
        body
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BadRequestException",
            format!("unsupported content type {content_type:?}: send an image (image/*, application/octet-stream) or multipart/form-data with a field named data"),
        ));
    };
    if image.is_empty() {
        return Err(ApiError::bad_request("empty request body: send an image"));
    }
    Ok(image)
}

/// Decodes and preprocesses an image exactly as the data stage did; large images off the
/// async threads.
async fn preprocess(loaded: &Arc<LoadedVersion>, image: Bytes) -> ApiResult<Vec<f32>> {
    let pre = loaded.preprocess;
    let small = image.len() <= INLINE_DECODE_BYTES;
    let run = move || {
        pre.image_bytes(&image)
            .map_err(|e| ApiError::bad_request(format!("cannot decode the image: {e}")))
    };
    // Decoding a few kilobytes costs less than a hop to the blocking pool; a large image must
    // not stall the async threads.
    if small {
        run()
    } else {
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    }
}

/// Encoded images up to this size are decoded on the async thread that received them.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Queues one image on `loaded`'s inference thread and waits for its prediction.
async fn infer(
    loaded: &Arc<LoadedVersion>,
    pixels: Vec<f32>,
    arrived: Instant,
) -> ApiResult<Prediction> {
    let (reply, answer) = oneshot::channel();
    loaded
        .submit(Job {
            pixels,
            arrived,
            observed: true,
            reply,
        })
        .map_err(|refused| {
            let why = match refused {
                Refused::Full => "the inference queue is full; retry later",
                Refused::Stopped => "the model version is being unloaded; retry",
            };
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                why,
            )
        })?;
    answer
        .await
        .map_err(|_| ApiError::internal("the inference thread stopped"))?
        .map_err(ApiError::internal)
}

fn prediction_json(loaded: &LoadedVersion, p: &Prediction) -> Value {
    let classes = &loaded.description.classes;
    let label = |c: usize| classes.get(c).cloned().unwrap_or_default();
    json!({
        "class": p.class,
        "label": label(p.class),
        "score": p.score,
        "neighbors": p.neighbours.iter().map(|n| json!({
            "id": n.id,
            "label": label(n.class),
            "score": n.score,
        })).collect::<Vec<_>>(),
    })
}

async fn v2_ready(AxumState(state): Shared) -> Response {
    let ready = state.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn v2_model(AxumState(state): Shared, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let loaded = resolve(&state, &name, None)
        .await
        .map_err(ApiError::kserve)?;
    let versions = layout::versions(state.registry(), &name).unwrap_or_default();
    Ok(Json(v2_metadata(&loaded, &versions)))
}

async fn v2_model_version(
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

async fn v2_model_ready(AxumState(state): Shared, Path(name): Path<String>) -> Response {
    match state.model_ready(&name) {
        None => ApiError::model_not_found(&name).kserve().into_response(),
        Some(ready) => ready_answer(&name, ready),
    }
}

async fn v2_model_version_ready(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match resolve(&state, &name, Some(&version)).await {
        Ok(loaded) => ready_answer(&name, loaded.ready()),
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

async fn v2_infer_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    v2_infer(state, name, None, headers, body)
        .await
        .map_err(ApiError::kserve)
}

async fn v2_infer_version(
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
    outputs.extend(neighbour_outputs(loaded, &request, &predictions));
    let encoded = v2::encode(&loaded.name, loaded.version, &request, outputs)
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
async fn v2_server() -> Json<Value> {
    Json(json!({
        "name": "mlops-deploy",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// KServe v1: `POST /v1/models/{name}:predict` with `{"instances": [...]}`, each instance an
/// encoded image as base64 (`"..."`, `{"b64": "..."}` or `{"image": {"b64": "..."}}`).
async fn v1_predict(
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
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| {
                ApiError::bad_request(format!("instance {i} is not valid base64: {e}")).kserve()
            })?;
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

// Management.

fn authorize(state: &State, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &state.config.management_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token.matches(g) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "this call needs Authorization: Bearer <management token>",
        )),
    }
}

#[derive(serde::Deserialize)]
struct Page {
    limit: Option<usize>,
    next_page_token: Option<String>,
}

async fn list_models(AxumState(state): Shared, Query(page): Query<Page>) -> ApiResult<Json<Value>> {
    let names = state.names();
    let start: usize = match page.next_page_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid next_page_token {t:?}")))?,
    };
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let chunk: Vec<Value> = names
        .iter()
        .skip(start)
        .take(limit)
        .map(|n| json!({ "modelName": n, "modelUrl": state.registry().join(n).display().to_string() }))
        .collect();
    let mut answer = json!({ "models": chunk });
    let next = start.saturating_add(limit);
    if next < names.len() {
        answer["nextPageToken"] = json!(next.to_string());
    }
    Ok(Json(answer))
}

/// TorchServe's description of one version, with what we know beyond it.
fn describe(
    state: &State,
    name: &str,
    v: u64,
    loaded: Option<&LoadedVersion>,
    is_default: bool,
) -> ApiResult<Value> {
    let dir = VersionDir::open(
        &layout::version_dir(state.registry(), name, v)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    )
    .map_err(|_| ApiError::version_not_found(name, &v.to_string()))?;
    let workers = match loaded {
        Some(l) => json!([{
            "id": format!("infer-{name}-{v}"),
            "startTime": l.loaded_at.to_rfc3339(),
            "status": if l.ready() { "READY" } else { "LOADING" },
            "memoryUsage": 0,
            "pid": std::process::id(),
            "gpu": !matches!(state.device, tch::Device::Cpu),
        }]),
        None => json!([]),
    };
    Ok(json!({
        "modelName": name,
        "modelVersion": v.to_string(),
        "modelUrl": dir.dir.display().to_string(),
        "runtime": "rust",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": state.config.batch_size,
        "maxBatchDelay": state.config.max_batch_delay_ms,
        "loadedAtStartup": is_default,
        "isDefault": is_default,
        "accuracy": dir.summary.accuracy,
        "classifier": dir.summary.classifier,
        "createdAt": dir.summary.created_at.to_rfc3339(),
        "rollout": state.rollout(name).map(|r| json!(r.spec)),
        "files": crate::registry::VIEWABLE
            .iter()
            .filter(|f| dir.manifest.output(f).is_some())
            .collect::<Vec<_>>(),
        "workers": workers,
        "jobQueueStatus": { "remainingCapacity": state.config.queue_capacity, "pendingRequests": 0 },
    }))
}

async fn describe_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let default = state
        .loaded(&name)
        .ok_or_else(|| ApiError::model_not_found(&name))?
        .default;
    let d = default.ok_or_else(|| {
        ApiError::internal(
            state
                .failure(&name)
                .unwrap_or_else(|| "no default version loaded".into()),
        )
    })?;
    Ok(Json(json!([describe(
        &state,
        &name,
        d.version,
        Some(&d),
        true
    )?])))
}

async fn describe_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let super::state::Loaded { default, others } = state
        .loaded(&name)
        .ok_or_else(|| ApiError::model_not_found(&name))?;
    let default_v = default.as_ref().map(|d| d.version);
    let find = |v: u64| -> Option<&LoadedVersion> {
        default
            .as_deref()
            .filter(|d| d.version == v)
            .or_else(|| others.iter().map(|o| o.as_ref()).find(|o| o.version == v))
    };
    let versions: Vec<u64> = if version == "all" {
        layout::versions(state.registry(), &name).map_err(|e| ApiError::internal(e.to_string()))?
    } else {
        vec![parse_version(&name, &version)?]
    };
    let described = versions
        .iter()
        .map(|&v| describe(&state, &name, v, find(v), default_v == Some(v)))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Value::Array(described)))
}

async fn set_default(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    if !layout::valid_name(&name) || state.loaded(&name).is_none() {
        return Err(ApiError::model_not_found(&name));
    }
    let v = parse_version(&name, &version)?;
    let exists = layout::versions(state.registry(), &name)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .contains(&v);
    if !exists {
        return Err(ApiError::version_not_found(&name, &version));
    }
    state.set_default(&name, v).await?;
    Ok(Json(json!({
        "status": format!("Default version successfully updated for model \"{name}\" to \"{v}\"")
    })))
}

async fn unregister(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let v = parse_version(&name, &version)?;
    match state.unload(&name, v) {
        Unload::Removed => Ok(Json(json!({
            "status": format!("Model \"{name}\" version {v} unregistered")
        }))),
        Unload::NoVersion => Err(ApiError::version_not_found(&name, &version)),
        Unload::IsDefault => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "InvalidModelVersionException",
            format!("Cannot remove default version {v} for model {name}"),
        )),
        Unload::InRollout => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "InvalidModelVersionException",
            format!("Cannot remove version {v} for model {name}: it is being rolled out (finish or roll back first)"),
        )),
        Unload::NoModel => Err(ApiError::model_not_found(&name)),
    }
}

/// `POST /models/{name}/rollback`: the registry's rollback (a rollout in progress is abandoned,
/// else the default returns to the version promoted before), applied at once.
async fn rollback(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    if !layout::valid_name(&name) || state.loaded(&name).is_none() {
        return Err(ApiError::model_not_found(&name));
    }
    let registry = state.registry().clone();
    let model = name.clone();
    let pointer = tokio::task::spawn_blocking(move || crate::registry::rollback(&registry, &model))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "InvalidModelVersionException",
                e.to_string(),
            )
        })?;
    state.sync().await;
    let v = pointer.default.unwrap_or(0);
    Ok(Json(json!({
        "status": format!("Model \"{name}\" rolled back: version {v} is the default"),
        "default": v,
    })))
}

/// `GET /models/{name}/{version}/files/{file}`: a version's report, training curves or
/// confusion matrix (checksum verified).
async fn version_file(
    AxumState(state): Shared,
    Path((name, version, file)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let v = parse_version(&name, &version)?;
    let Some(&file) = crate::registry::VIEWABLE.iter().find(|f| **f == file) else {
        return Err(not_found().await);
    };
    let dir = layout::version_dir(state.registry(), &name, v)
        .map_err(|_| ApiError::model_not_found(&name))?;
    let dir = VersionDir::open(&dir).map_err(|_| ApiError::version_not_found(&name, &version))?;
    let path = dir
        .verified_if_listed(file)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("version {v} of {name} holds no {file}"),
            )
        })?;
    // A few hundred kilobytes at most: read off the async threads all the same.
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let content_type = if file.ends_with(".html") {
        "text/html; charset=utf-8"
    } else {
        "image/png"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            // The report is self-contained: it needs nothing but its inline images and styles.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image_of(content_type: &str, body: Vec<u8>) -> Result<Bytes, ApiError> {
        let mut headers = HeaderMap::new();
        if let Ok(v) = content_type.parse() {
            headers.insert(header::CONTENT_TYPE, v);
        }
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(image_from_request(&headers, Bytes::from(body)))
    }

    fn form(boundary: &str, field: &str, data: &[u8]) -> Vec<u8> {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    #[test]
    fn boundaries_keep_their_case_and_may_be_quoted() {
        let b = "----WebKitFormBoundaryAbC9xYz1QwErTy";
        for content_type in [
            format!("multipart/form-data; boundary={b}"),
            format!("Multipart/Form-Data; boundary=\"{b}\""),
        ] {
            let got = image_of(&content_type, form(b, "data", b"PNGDATA")).unwrap();
            assert_eq!(&got[..], b"PNGDATA", "{content_type}");
        }
        let e = image_of(
            "multipart/form-data; boundary=abc",
            form("abc", "file", b"x"),
        )
        .unwrap_err();
        assert!(e.message.contains("no field named data"), "{}", e.message);
    }

    proptest! {
        #[test]
        fn arbitrary_multipart_bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            boundary in "[-A-Za-z0-9'()+_,./:=?]{1,70}",
            quoted in any::<bool>(),
        ) {
            let b = if quoted { format!("\"{boundary}\"") } else { boundary.clone() };
            let _ = image_of(&format!("multipart/form-data; boundary={b}"), body.clone());
            // A well-formed form around arbitrary bytes returns exactly those bytes (a boundary
            // with RFC 2045 tspecials is only well-formed when quoted).
            let got = image_of(&format!("multipart/form-data; boundary={b}"), form(&boundary, "data", &body));
            let token = boundary.chars().all(|c| c.is_ascii_alphanumeric() || "-'+_.".contains(c));
            if !body.is_empty() && (quoted || token) {
                prop_assert_eq!(got.map(|g| g.to_vec()).ok(), Some(body));
            }
        }

        #[test]
        fn arbitrary_content_types_never_panic(
            content_type in ".{0,80}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = image_of(&content_type, body);
        }
    }
}
