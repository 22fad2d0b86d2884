//! The Batch upload page: a zip, or a metadata file with its recordings, sent from the browser
//! (a progress bar while it goes, from `console.js`; a plain form post without script), stored
//! through the upload API's arrival path into `api/<upload>/` of the tenant's drop folder
//! (quota granted as bytes come, each file durable before the answer, then announced), then its
//! report, row by row, as the rows are matched.

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Redirect;
use maud::{Markup, html};

use super::session::Session;
use super::{ConsoleState, PageError, blocking, csrf_field, page};
use crate::dropbox::{FileKind, RelPath, is_temp_name};
use crate::ingress::http::upload::{new_upload_id, place_all, receive, upload_session};
use crate::tenant::TenantId;

/// Files one batch may carry.
const MAX_FILES: usize = 1000;

pub async fn form(session: Session, State(s): State<ConsoleState>) -> Markup {
    let session = &session;
    let config = s.http.config.get();
    page(
        "Batch upload",
        session,
        html! {
            h1 { "Batch upload" }
            form.stack #batch method="post" action="/console/upload" enctype="multipart/form-data" {
                (csrf_field(session))
                @if session.is_admin() {
                    label for="tenant" { "Tenant" }
                    select #tenant name="tenant" required {
                        @for t in &config.tenants { option value=(t.id) { (t.id) } }
                    }
                }
                label for="files" { "A zip of recordings and their metadata file, or a metadata file and its recordings" }
                p.hint id="files-hint" { "Up to 3 GiB a file. The rows are matched as in any upload; the report follows." }
                input #files type="file" name="files" multiple required aria-describedby="files-hint";
                button type="submit" { "Upload" }
                div.progress hidden {
                    label for="progress" { "Uploading" }
                    progress #progress max="100" value="0" {}
                    span #progress-text aria-live="polite" {}
                }
            }
        },
    )
}

pub async fn upload(
    session: Session,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Redirect, PageError> {
    let bad = |e: axum::extract::multipart::MultipartError| PageError::new(StatusCode::BAD_REQUEST, e.body_text());
    // The CSRF field comes first, so nothing is stored for a forged form.
    let csrf = match form.next_field().await.map_err(bad)? {
        Some(f) if f.name() == Some("csrf") => small_text(f).await?,
        _ => String::new(),
    };
    session.check_form(&headers, &csrf)?;
    let config = s.http.config.get();
    let limits = config
        .http
        .clone()
        .ok_or_else(|| PageError::new(StatusCode::NOT_FOUND, "No [http] section."))?;
    let mut tenant = session.tenant().cloned();
    let upload = new_upload_id();
    let mut written = Vec::new();
    let mut session_grant = None;
    let stored: Result<(), PageError> = async {
        while let Some(field) = form.next_field().await.map_err(bad)? {
            if field.name() == Some("tenant") && session.is_admin() {
                // Chosen before the files: they are counted and stored as its.
                if !written.is_empty() {
                    return Err(PageError::new(
                        StatusCode::BAD_REQUEST,
                        "The tenant comes before the files.",
                    ));
                }
                let raw = small_text(field).await?;
                tenant = Some(TenantId::parse(raw.trim()).map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e))?);
                continue;
            }
            let owner = tenant
                .clone()
                .filter(|t| config.tenant(t.as_str()).is_some())
                .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "Choose a tenant."))?;
            let Some(name) = field.file_name().map(str::to_owned).filter(|n| !n.is_empty()) else {
                continue;
            };
            if written.len() >= MAX_FILES {
                return Err(PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("More than {MAX_FILES} files in one batch."),
                ));
            }
            let rel = batch_name(&upload, &name)?;
            if session_grant.is_none() {
                session_grant =
                    Some(upload_session(&s.uploads, &owner).map_err(|e| PageError::new(e.status, e.error))?);
            }
            let file = receive(
                &s.uploads,
                &owner,
                |_| Some(rel),
                field,
                1..=limits.max_upload_bytes,
                limits.body_timeout,
            )
            .await
            .map_err(|e| PageError::new(e.status, format!("{name}: {}", e.error)))?;
            written.push(file);
        }
        Ok(())
    }
    .await;
    if let Err(e) = stored {
        written.into_iter().for_each(crate::arrival::Written::discard);
        return Err(e);
    }
    let owner = tenant.ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "Choose a tenant."))?;
    if written.is_empty() {
        return Err(PageError::new(StatusCode::BAD_REQUEST, "Choose the files to upload."));
    }
    // Recordings and zips first, the metadata that names them last: the fast path.
    let matching = config.matching.clone();
    written.sort_by_key(|w| matches!(FileKind::of(w.rel().file_name(), &matching), FileKind::Metadata(_)));
    let count = written.len();
    place_all(&s.uploads, &owner, written, Vec::new())
        .await
        .map_err(|e| PageError::new(e.status, e.error))?;
    tracing::info!(tenant = %owner, upload = %upload, files = count, "batch uploaded (console)");
    Ok(Redirect::to(&format!("/console/upload/{owner}/{upload}")))
}

/// A short text field (a token, a tenant id), read no further than 256 bytes.
pub async fn small_text(mut field: axum::extract::multipart::Field<'_>) -> Result<String, PageError> {
    let mut value = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e.body_text()))?
    {
        if value.len() + chunk.len() > 256 {
            return Err(PageError::new(StatusCode::BAD_REQUEST, "A form field is too long."));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "A form field is not text."))
}

/// Where a file of the batch goes: `api/<upload>/<its own name>`, if that is a name we take.
fn batch_name(upload: &str, name: &str) -> Result<RelPath, PageError> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let refused = || {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a file name we can store."),
        )
    };
    if base.is_empty() || is_temp_name(base) {
        return Err(refused());
    }
    RelPath::parse(&format!("api/{upload}/{base}")).ok_or_else(refused)
}

pub async fn result(
    session: Session,
    State(s): State<ConsoleState>,
    Path((tenant, upload)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    if !session.may_see(&tenant) || upload.len() != 16 || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PageError::not_found());
    }
    let (catalog, who, dir) = (s.catalog.clone(), tenant.clone(), format!("api/{upload}"));
    let files = blocking(move || {
        let files = catalog.console().batch_files(&who, &dir)?;
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let lines = catalog.reports().report_lines(f.id)?;
            out.push((f, lines));
        }
        Ok::<_, crate::catalog::CatalogError>(out)
    })
    .await?;
    // A zip's rows come from the metadata file inside it, read after it is unpacked.
    let has_rows = files
        .iter()
        .any(|(f, _)| !f.rel_path.to_ascii_lowercase().ends_with(".zip"));
    let settled = has_rows
        && files
            .iter()
            .all(|(f, lines)| f.status != "parsing" && lines.iter().all(|l| l.status != "waiting"));
    let body = html! {
        @if !settled { meta http-equiv="refresh" content="2"; }
        h1 { "Batch " (upload) }
        p role="status" {
            @if !has_rows { "Stored; waiting for its metadata file to be read." }
            @else if settled { "Every row is decided." }
            @else { "Rows are being matched; this page refreshes itself." }
        }
        @for (f, lines) in files.iter().filter(|(f, lines)| !lines.is_empty() || f.reason.is_some() || !f.rel_path.to_ascii_lowercase().ends_with(".zip")) {
            section.report {
                h2 { (f.rel_path.rsplit('/').next().unwrap_or(&f.rel_path)) }
                @if let Some(r) = &f.reason { p.error { (r) } }
                div.scroll { table {
                    caption.visually-hidden { "Report of " (f.rel_path) }
                    thead { tr { th scope="col" { "Row" } th scope="col" { "Conversation" } th scope="col" { "Recording" } th scope="col" { "Status" } th scope="col" { "Detail" } } }
                    tbody { @for l in lines { tr {
                        td.num { (l.row.map(|r| r.to_string()).unwrap_or_default()) }
                        td { (l.conversation_id) } td { (l.recording) }
                        td { span class=(format!("state s-{}", l.status)) { (l.status) } }
                        td.detail { (l.detail) }
                    } } }
                } }
            }
        }
        p { a href="/console/upload" { "Upload another batch" } }
    };
    Ok(page(&format!("Batch {upload}"), &session, body))
}
