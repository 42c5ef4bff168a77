//! From a request to a prediction, whatever the API: which loaded version answers (a pinned
//! version, the default, a canary's candidate, a shadow beside it), decoding and preprocessing
//! the image, and queueing it on the version's inference thread.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use mlops_core::artifact::registry as layout;
use mlops_index::Prediction;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::errors::{ApiError, ApiResult};
use crate::serve::metrics::{Role, Shadowed};
use crate::serve::state::{Lookup, Route, State};
use crate::serve::worker::{Job, LoadedVersion, Refused};

/// A version number from the URL, or the 404 that a version that is no number gets.
pub(super) fn parse_version(name: &str, version: &str) -> ApiResult<u64> {
    version
        .parse::<u64>()
        .map_err(|_| ApiError::version_not_found(name, version))
}

/// The loaded version a request is for, or the matching 404.
pub(super) async fn resolve(
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

/// The header naming the version that answered.
pub(super) const MODEL_VERSION_HEADER: &str = "x-model-version";

/// Where a request goes: the version named in the URL, or the model's routing (the default,
/// a canary's candidate for its share, a shadow beside the default).
pub(super) async fn route(
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
pub(super) async fn infer_routed(
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

/// Decodes and preprocesses an image exactly as the data stage did; large images off the
/// async threads.
pub(super) async fn preprocess(loaded: &Arc<LoadedVersion>, image: Bytes) -> ApiResult<Vec<f32>> {
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

/// One prediction as TorchServe's handler answers it (and KServe v1 lists it): class,
/// label, score and the neighbours that voted.
pub(super) fn prediction_json(loaded: &LoadedVersion, p: &Prediction) -> Value {
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
