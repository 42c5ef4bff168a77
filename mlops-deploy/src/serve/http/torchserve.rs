//! TorchServe's inference API: `/ping`, `/predictions` and `/explanations`, with the image as
//! the body or as the multipart field `data`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::dispatch::{infer_routed, prediction_json, preprocess, route, MODEL_VERSION_HEADER};
use super::errors::{body_error, ApiError, ApiResult};
use super::Shared;
use crate::serve::state::State;

/// `GET /ping`: Healthy once every model serves a warmed-up default.
pub(super) async fn ping(AxumState(state): Shared) -> Response {
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

pub(super) async fn predict_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, None, headers, body, false).await
}

pub(super) async fn predict_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, Some(version), headers, body, false).await
}

/// TorchServe's explanations route: the prediction with the gallery images that decided it.
pub(super) async fn explain_default(
    AxumState(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, None, headers, body, true).await
}

pub(super) async fn explain_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    predict(state, name, Some(version), headers, body, true).await
}

/// A TorchServe prediction (or, with `explain`, explanation) of the image in the body.
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
        crate::serve::explain::explanation(
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
