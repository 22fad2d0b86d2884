//! The operator API (SPEC §10): tenants listed and created, status, conversations and retry,
//! with an admin token. A tenant created here is written to `tenants.d/<id>.toml`, the file
//! `dropsync tenant add` writes, with its API token in `tenants.d/<id>.tokens`, and is in force
//! when the answer comes: SFTP keys, drop folder and token alike.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::catalog::{Catalog, ConvState};
use crate::config::Config;
use crate::ingress::http::error::{ApiError, ErrorBody};
use crate::ingress::http::{Admin, HttpShared, blocking};
use crate::onboard::{self, NewTenant, OnboardError};
use crate::ops::sample::{self, SampleReport};

/// Applies the configuration files as they are now (what SIGHUP does); the summary, or every
/// problem.
pub type Reload = Arc<dyn Fn() -> Result<String, Vec<String>> + Send + Sync>;

/// What the operator API needs besides the HTTP side's shared state.
#[derive(Clone)]
pub struct AdminState {
    pub http: HttpShared,
    pub catalog: Catalog,
    /// Applies the configuration files as they are now (what SIGHUP does); the summary, or
    /// every problem.
    pub reload: Reload,
}

impl axum::extract::FromRef<AdminState> for HttpShared {
    fn from_ref(state: &AdminState) -> HttpShared {
        state.http.clone()
    }
}

pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/api/admin/status", get(status))
        .route("/api/admin/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/api/admin/tenants/{id}",
            get(one_tenant).patch(change_tenant).delete(remove_tenant),
        )
        .route("/api/admin/tenants/{id}/keys", post(add_key))
        .route("/api/admin/tenants/{id}/sample", post(sample))
        .route("/api/admin/conversations", get(conversations))
        .route("/api/admin/retry", post(retry))
        .with_state(state)
}

/// A tenant as configured.
#[derive(Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub timezone: String,
    /// Its SFTP public keys, as configured.
    pub authorized_keys: Vec<String>,
    pub minute_allocation: Option<u64>,
    /// How long local copies are kept (humantime), if not `[retention] local`.
    pub retention: Option<String>,
    /// Whether it has API tokens.
    pub api: bool,
    /// The file that defines it.
    pub defined_in: String,
}

fn view_of(t: &crate::tenant::Tenant) -> TenantView {
    TenantView {
        id: t.id.to_string(),
        timezone: t.timezone.name().to_owned(),
        authorized_keys: t.authorized_keys.clone(),
        minute_allocation: t.allocation.map(|a| a.minutes),
        retention: t.retention.map(|r| humantime::format_duration(r).to_string()),
        api: t.api_tokens_file.is_some(),
        defined_in: t.defined_in.display().to_string(),
    }
}

#[utoipa::path(get, path = "/api/admin/tenants", tag = "operator",
    responses((status = 200, body = [TenantView]), (status = 401, body = ErrorBody)))]
async fn list_tenants(_: Admin, State(s): State<AdminState>) -> Json<Vec<TenantView>> {
    Json(s.http.config.get().tenants.iter().map(view_of).collect())
}

#[utoipa::path(get, path = "/api/admin/tenants/{id}", tag = "operator",
    params(("id" = String, Path, description = "tenant id")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn one_tenant(
    _: Admin,
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let config = s.http.config.get();
    let t = config
        .tenant(&id)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {id:?}")))?;
    Ok(Json(view_of(t)))
}

/// A new tenant (SPEC §10).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    /// OpenSSH public key lines.
    pub authorized_keys: Vec<String>,
    /// IANA time zone, e.g. "Europe/Paris" (default UTC).
    pub timezone: Option<String>,
    /// `[tenants.mapping]` keys, e.g. {"conversation_id": "CallID"}.
    #[schema(value_type = Object)]
    pub mapping: Option<serde_json::Map<String, serde_json::Value>>,
    /// How long local copies are kept, e.g. "30d".
    pub retention: Option<String>,
    pub minute_allocation: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SftpCredentials {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: String,
    /// Each host key as a client is shown it (`SHA256:… (TYPE)`).
    pub host_key_fingerprint: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    pub sftp: SftpCredentials,
    /// The tenant's upload API token: shown once, kept hashed.
    pub api_token: String,
}

#[utoipa::path(post, path = "/api/admin/tenants", tag = "operator", request_body = CreateTenant,
    responses((status = 201, body = Created), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    _: Admin,
    State(s): State<AdminState>,
    body: Result<Json<CreateTenant>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Json(new) = body?;
    let config = s.http.config.get();
    let token = crate::ingress::http::tokens::new_token();
    let spec = NewTenant {
        id: new.id,
        keys: new.authorized_keys.join("\n"),
        timezone: new.timezone,
        mapping: new.mapping,
        retention: new.retention,
        minute_allocation: new.minute_allocation,
        api_token: Some(token.clone()),
    };
    let reload = s.reload.clone();
    let onboarded = tokio::task::spawn_blocking(move || {
        let onboarded = onboard::create(&config, &spec)?;
        Ok::<_, OnboardError>((onboarded, reload()))
    })
    .await
    .map_err(|e| ApiError::internal("creating the tenant failed", e))?;
    let (onboarded, applied) = onboarded.map_err(onboard_error)?;
    if let Err(problems) = applied {
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "the tenant was written but the configuration did not reload".into(),
            details: problems,
        });
    }
    tracing::info!(tenant = %onboarded.username, file = %onboarded.file.display(), "tenant created (http)");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            sftp: SftpCredentials {
                host: onboarded.host,
                port: onboarded.port,
                username: onboarded.username,
                host_key_fingerprint: onboarded.host_key_fingerprints,
            },
            api_token: token,
        }),
    ))
}

/// Runs a change to the tenant files on a blocking thread, then puts the configuration in force.
async fn apply(
    s: &AdminState,
    change: impl FnOnce(&Config) -> Result<(), OnboardError> + Send + 'static,
) -> Result<(), ApiError> {
    apply_change(s.http.config.get(), s.reload.clone(), change).await
}

/// Runs a change to the tenant files (the operator API's, the console's) on a blocking thread,
/// then puts the configuration in force.
pub async fn apply_change(
    config: Arc<Config>,
    reload: Reload,
    change: impl FnOnce(&Config) -> Result<(), OnboardError> + Send + 'static,
) -> Result<(), ApiError> {
    let done = tokio::task::spawn_blocking(move || change(&config).map(|()| reload()))
        .await
        .map_err(|e| ApiError::internal("changing the tenant failed", e))?;
    match done.map_err(onboard_error)? {
        Ok(_) => Ok(()),
        Err(problems) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "the tenant files were written but the configuration did not reload".into(),
            details: problems,
        }),
    }
}

#[utoipa::path(patch, path = "/api/admin/tenants/{id}", tag = "operator",
    params(("id" = String, Path, description = "tenant id")),
    request_body(content = Object, description = "any of authorized_keys, timezone, minute_allocation, on_allocation_exceeded, retention, mapping; null removes a key"),
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn change_tenant(
    _: Admin,
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TenantView>, ApiError> {
    let Json(changes) = body?;
    let who = id.clone();
    apply(&s, move |config| onboard::change(config, &who, &changes)).await?;
    tracing::info!(tenant = %id, "tenant changed (http)");
    let config = s.http.config.get();
    let t = config
        .tenant(&id)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {id:?}")))?;
    Ok(Json(view_of(t)))
}

#[utoipa::path(delete, path = "/api/admin/tenants/{id}", tag = "operator",
    params(("id" = String, Path, description = "tenant id")),
    responses((status = 204, description = "removed: its sessions end, its tokens stop working; its files stay"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_tenant(_: Admin, State(s): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let who = id.clone();
    apply(&s, move |config| onboard::remove(config, &who)).await?;
    tracing::info!(tenant = %id, "tenant removed (http)");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/admin/tenants/{id}/keys", tag = "operator",
    params(("id" = String, Path, description = "tenant id")),
    request_body(content = String, description = "an OpenSSH public key line (text/plain), or JSON {\"key\": …}"),
    responses((status = 200, body = SftpCredentials), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_key(
    _: Admin,
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SftpCredentials>, ApiError> {
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("the key is not text"))?;
    let key = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request("key: required (an OpenSSH public key line)"))?,
        Err(_) => text,
    };
    let who = id.clone();
    apply(&s, move |config| onboard::add_keys(config, &who, &key)).await?;
    let config = s.http.config.get();
    Ok(Json(SftpCredentials {
        host: config.sftp.as_ref().map(|c| c.listen.ip().to_string()),
        port: config.sftp.as_ref().map(|c| c.listen.port()),
        username: id,
        host_key_fingerprint: config
            .sftp
            .as_ref()
            .map(|c| crate::ingress::sftp::host_keys::fingerprints(&c.host_keys))
            .unwrap_or_default(),
    }))
}

#[utoipa::path(post, path = "/api/admin/tenants/{id}/sample", tag = "operator",
    params(("id" = String, Path, description = "tenant id")),
    request_body(content = String, description = "a sample CSV, TSV, JSON or JSON Lines file as the body with its Content-Type (text/csv, …), or as the multipart field file"),
    responses((status = 200, body = SampleReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn sample(
    _: Admin,
    State(s): State<AdminState>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Result<Json<SampleReport>, ApiError> {
    use axum::extract::FromRequest;
    let config = s.http.config.get();
    let tenant = config
        .tenant(&id)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {id:?}")))?;
    let kind = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let limit = config.http.as_ref().map_or(4 << 20, |h| h.max_json_bytes as usize);
    let too_large = |e: String| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the sample cannot be read: {e}"));
    let (bytes, kind) = if kind.starts_with("multipart/form-data") {
        let mut form = axum::extract::Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?
                .ok_or_else(|| ApiError::bad_request("the form has no field named file"))?;
            if field.name() == Some("file") {
                let kind = field.content_type().unwrap_or("").to_owned();
                break (field.bytes().await.map_err(|e| too_large(e.body_text()))?, kind);
            }
        }
    } else {
        let body = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|e| too_large(e.to_string()))?;
        (body, kind)
    };
    let format = sample::format_of(&kind, &bytes);
    let (mapping, matching) = (tenant.mapping.clone(), config.matching.clone());
    let report = tokio::task::spawn_blocking(move || {
        sample::suggest(
            &bytes,
            format,
            Some(&mapping),
            &matching.recording_extensions,
            matching.max_field_bytes,
        )
    })
    .await
    .map_err(|e| ApiError::internal("reading the sample failed", e))?;
    Ok(Json(report))
}

/// A refused change to the tenant files, as the HTTP side answers it.
pub fn onboard_error(e: OnboardError) -> ApiError {
    if let OnboardError::WouldNotLoad(problems) = &e {
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "the configuration would not load with this tenant".into(),
            details: problems.problems.iter().map(ToString::to_string).collect(),
        };
    }
    match &e {
        OnboardError::NoSuchTenant(_) => ApiError::not_found(e.to_string()),
        OnboardError::TenantExists(_) | OnboardError::FileExists(_) | OnboardError::NotOurs { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        OnboardError::BadChange(_) => ApiError::bad_request(e.to_string()),
        OnboardError::BadTenantId(_)
        | OnboardError::NotAKey(_)
        | OnboardError::BadKey { .. }
        | OnboardError::NoKey(_)
        | OnboardError::WouldNotLoad(_) => ApiError::bad_request(e.to_string()),
        _ => ApiError::internal("changing the tenant files failed", e),
    }
}

#[utoipa::path(get, path = "/api/admin/status", tag = "operator",
    responses((status = 200, description = "as `dropsync status --json`", body = Object), (status = 401, body = ErrorBody)))]
async fn status(_: Admin, State(s): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let config: Arc<Config> = s.http.config.get();
    let view = blocking("reading the status failed", move || {
        crate::ops::status::view(&config, &s.catalog, None)
    })
    .await?;
    as_json("reading the status failed", view)
}

fn as_json(what: &'static str, value: impl Serialize) -> Result<Json<serde_json::Value>, ApiError> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::internal(what, e))
}

#[derive(Deserialize, IntoParams)]
pub struct ConversationsQuery {
    pub tenant: Option<String>,
    /// received, waiting, complete, forwarded, rejected, expired, failed, held
    pub state: Option<String>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/admin/conversations", tag = "operator", params(ConversationsQuery),
    responses((status = 200, body = [Object]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn conversations(
    _: Admin,
    State(s): State<AdminState>,
    query: Result<Query<ConversationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(st) => Some(ConvState::parse(st).ok_or_else(|| ApiError::bad_request(format!("unknown state {st:?}")))?),
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list =
        tokio::task::spawn_blocking(move || s.catalog.reports().conversations(q.tenant.as_deref(), state, limit))
            .await
            .map_err(|e| ApiError::internal("listing conversations failed", e))?
            .map_err(|e| ApiError::internal("listing conversations failed", e))?;
    serde_json::to_value(list)
        .map(Json)
        .map_err(|e| ApiError::internal("listing conversations failed", e))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    pub tenant: Option<String>,
    pub conversation_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Retried {
    /// Conversations queued again.
    pub requeued: usize,
}

#[utoipa::path(post, path = "/api/admin/retry", tag = "operator", request_body = RetryRequest,
    responses((status = 200, body = Retried), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn retry(
    _: Admin,
    State(s): State<AdminState>,
    body: Result<Json<RetryRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Retried>, ApiError> {
    let Json(r) = body?;
    let grace = s.http.config.get().matching.grace.as_millis() as i64;
    let requeued = tokio::task::spawn_blocking(move || {
        s.catalog.reports().retry(
            r.tenant.as_deref(),
            r.conversation_id.as_deref(),
            crate::catalog::now_ms(),
            grace,
        )
    })
    .await
    .map_err(|e| ApiError::internal("retrying failed", e))?
    .map_err(|e| ApiError::internal("retrying failed", e))?;
    Ok(Json(Retried { requeued }))
}

/// The operator API's part of `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_tenants,
        one_tenant,
        create_tenant,
        change_tenant,
        remove_tenant,
        add_key,
        sample,
        status,
        conversations,
        retry
    ),
    components(schemas(
        TenantView,
        CreateTenant,
        Created,
        SftpCredentials,
        RetryRequest,
        Retried,
        ErrorBody,
        SampleReport,
        crate::ops::sample::ColumnFit
    ))
)]
pub struct AdminApi;
