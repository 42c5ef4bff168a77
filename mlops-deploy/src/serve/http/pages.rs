//! The two web pages, built into the binary: the inference listener's classifier and the
//! management listener's registry.

use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mlops_core::artifact::registry as layout;

use super::Shared;

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
pub(super) async fn registry_page() -> Response {
    (page_headers(), include_str!("../ui/registry.html")).into_response()
}

/// The web page of the inference listener: choose, drop or paste an image, see the predicted
/// class, each class's vote share and the gallery images that voted. Plain HTML and one inline
/// script, built into the binary: nothing outside the machine is fetched.
pub(super) async fn page(AxumState(state): Shared) -> Response {
    // Model names are restricted to [A-Za-z0-9._-] (layout::valid_name): nothing to escape.
    let options: String = state
        .names()
        .iter()
        .filter(|n| layout::valid_name(n))
        .map(|n| format!("<option>{n}</option>"))
        .collect();
    let html = include_str!("../ui/index.html").replace("<!--MODELS-->", &options);
    (page_headers(), html).into_response()
}
