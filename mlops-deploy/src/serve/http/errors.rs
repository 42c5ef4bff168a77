//! Error answers in the shape each API's clients expect: TorchServe's
//! `{"code", "type", "message"}` or KServe's `{"error"}`.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer: TorchServe's `{"code", "type", "message"}`, or KServe's `{"error"}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    pub(super) message: String,
    kserve: bool,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            kserve: false,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
    }

    pub(super) fn model_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ModelNotFoundException",
            format!("Model not found: {name}"),
        )
    }

    pub(super) fn version_not_found(name: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ModelVersionNotFoundException",
            format!("Model version {version} does not exist for model {name}"),
        )
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            message,
        )
    }

    /// The same error in KServe's shape.
    pub(super) fn kserve(mut self) -> Self {
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

/// A handler's result: an error is answered as [`ApiError`] says.
pub(super) type ApiResult<T> = Result<T, ApiError>;

/// TorchServe's answer to an unknown path.
pub(super) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        "Requested resource is not found, please refer to API document.",
    )
}

/// TorchServe's answer to a known path with the wrong method.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowedException",
        "Requested method is not allowed, please refer to API document.",
    )
}

/// The answer to a body that could not be read (too large, cut off).
pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "PayloadTooLargeException"
    } else {
        "BadRequestException"
    };
    ApiError::new(status, kind, rejection.body_text())
}
