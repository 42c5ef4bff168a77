//! The three listeners' routes: inference (TorchServe and KServe), management, metrics.
//!
//! - [`torchserve`]: TorchServe's inference API (`/ping`, `/predictions`, `/explanations`);
//! - [`kserve`]: KServe's v2 (Open Inference Protocol) and v1 APIs;
//! - [`management`]: TorchServe's management API and the registry page's files;
//! - [`pages`]: the two web pages;
//! - [`dispatch`]: what every inference route shares, from routing to the prediction;
//! - [`errors`]: the error answers.

mod dispatch;
mod errors;
mod kserve;
mod management;
mod pages;
mod torchserve;

use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use super::state::State;
use errors::{method_not_allowed, not_found};
use kserve::{
    v1_predict, v2_infer_default, v2_infer_version, v2_model, v2_model_ready, v2_model_version,
    v2_model_version_ready, v2_ready, v2_server,
};
use management::{
    describe_default, describe_version, list_models, rollback, set_default, unregister,
    version_file,
};
use pages::{page, registry_page};
use torchserve::{explain_default, explain_version, ping, predict_default, predict_version};

/// The state every handler extracts.
type Shared = AxumState<Arc<State>>;

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

/// Counts every error answer by status code (`mlops_http_errors_total`).
async fn count_errors(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        state.metrics.observe_error(status.as_u16());
    }
    response
}
