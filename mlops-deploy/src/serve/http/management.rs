//! TorchServe's management API: list and describe models and versions, set the default,
//! unregister a version, roll back; and a version's report, curves and confusion matrix for
//! the registry page. The calls that change state need the management token when one is set.

use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mlops_core::artifact::registry as layout;
use mlops_core::artifact::VersionDir;
use serde_json::{json, Value};

use super::dispatch::parse_version;
use super::errors::{not_found, ApiError, ApiResult};
use super::Shared;
use crate::serve::state::{State, Unload};
use crate::serve::worker::LoadedVersion;

/// Passes when no management token is set or the request carries it as a bearer token.
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

/// `GET /models`' paging: TorchServe's `limit` and `next_page_token`.
#[derive(serde::Deserialize)]
pub(super) struct Page {
    limit: Option<usize>,
    next_page_token: Option<String>,
}

/// `GET /models`: the model names, a page at a time.
pub(super) async fn list_models(
    AxumState(state): Shared,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
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
    // TorchServe's workers are our inference threads, one entry each.
    let count = state.workers();
    let workers: Vec<Value> = loaded
        .map(|l| {
            (0..l.workers())
                .map(|i| {
                    json!({
                        "id": format!("infer-{name}-{v}-{i}"),
                        "startTime": l.loaded_at.to_rfc3339(),
                        // Loading finishes with every thread's warm-up.
                        "status": "READY",
                        "memoryUsage": 0,
                        "pid": std::process::id(),
                        "gpu": !matches!(state.device, tch::Device::Cpu),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "modelName": name,
        "modelVersion": v.to_string(),
        "modelUrl": dir.dir.display().to_string(),
        "runtime": "rust",
        "minWorkers": count,
        "maxWorkers": count,
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

/// `GET /models/{name}`: the default version's description.
pub(super) async fn describe_default(
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

/// `GET /models/{name}/{version}`: one version's description, or every version's for `all`.
pub(super) async fn describe_version(
    AxumState(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let crate::serve::state::Loaded { default, others } = state
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

/// `PUT /models/{name}/{version}/set-default`: load, promote in the registry, swap at once.
pub(super) async fn set_default(
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

/// `DELETE /models/{name}/{version}`: stop serving a version that is neither the default nor
/// a rollout's candidate (the registry keeps it).
pub(super) async fn unregister(
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
pub(super) async fn rollback(
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
pub(super) async fn version_file(
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
