//! The Calls page: one table of conversations, filtered by tenant, state and day, newest first;
//! a conversation's page (its fields, recordings with an audio player, every send of it as its
//! report shows it, where it was delivered) with a retry for a failed or expired one; and the
//! recordings themselves, streamed with range requests so the player can seek. A tenant sees
//! only its own: other tenants' calls and recordings are "not found", never "forbidden".

use std::io::{Seek, SeekFrom};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{CsrfOnly, Session};
use super::{ConsoleState, PageError, blocking, csrf_field, duration, page};
use crate::catalog::{CallFilter, ConvState};
use crate::dropbox::RelPath;
use crate::tenant::TenantId;

const PAGE_ROWS: usize = 50;

#[derive(Deserialize, Default)]
pub struct Filter {
    tenant: Option<String>,
    state: Option<String>,
    date: Option<String>,
    page: Option<usize>,
}

pub async fn list(
    session: Session,
    State(s): State<ConsoleState>,
    Query(q): Query<Filter>,
) -> Result<Markup, PageError> {
    let tenant = match session.tenant() {
        Some(t) => Some(t.to_string()),
        None => q.tenant.clone().filter(|t| !t.is_empty()),
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(st) => Some(
            ConvState::parse(st).ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, format!("No state {st:?}.")))?,
        ),
        None => None,
    };
    let day = match q.date.as_deref().filter(|d| !d.is_empty()) {
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| PageError::new(StatusCode::BAD_REQUEST, format!("{d:?} is not a date (YYYY-MM-DD).")))?
                .to_string(),
        ),
        None => None,
    };
    let page_no = q.page.unwrap_or(0).min(10_000);
    let filter = CallFilter {
        tenant: tenant.clone(),
        state,
        day: day.clone(),
        offset: page_no * PAGE_ROWS,
        limit: PAGE_ROWS + 1,
    };
    let catalog = s.catalog.clone();
    let mut rows = blocking(move || catalog.console().calls(&filter)).await?;
    let more = rows.len() > PAGE_ROWS;
    rows.truncate(PAGE_ROWS);
    let config = s.http.config.get();
    let link = |p: usize| {
        format!(
            "/console/calls?tenant={}&state={}&date={}&page={p}",
            tenant.as_deref().unwrap_or(""),
            state.map_or("", ConvState::as_str),
            day.as_deref().unwrap_or("")
        )
    };
    Ok(page(
        "Calls",
        &session,
        html! {
            h1 { "Calls" }
            form.filters method="get" action="/console/calls" {
                @if session.is_admin() {
                    div { label for="tenant" { "Tenant" }
                        select #tenant name="tenant" {
                            option value="" { "every tenant" }
                            @for t in &config.tenants {
                                option value=(t.id) selected[tenant.as_deref() == Some(t.id.as_str())] { (t.id) }
                            }
                        }
                    }
                }
                div { label for="state" { "State" }
                    select #state name="state" {
                        option value="" { "any state" }
                        @for st in ConvState::ALL {
                            option value=(st.as_str()) selected[state == Some(st)] { (st.as_str()) }
                        }
                    }
                }
                div { label for="date" { "Contact date" } input #date type="date" name="date" value=(day.as_deref().unwrap_or("")); }
                button type="submit" { "Filter" }
            }
            div.scroll {
                table {
                    caption.visually-hidden { "Conversations, newest first" }
                    thead { tr {
                        th scope="col" { "Conversation" } th scope="col" { "Tenant" } th scope="col" { "State" }
                        th scope="col" { "Contact time" } th scope="col" { "Length" } th scope="col" { "Detail" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { a href=(format!("/console/calls/{}", r.id)) { (r.conversation_id.as_deref().unwrap_or("(no id)")) } }
                                td { (r.tenant) }
                                td { span class=(format!("state s-{}", r.state)) { (r.state) @if r.updated { " (updated)" } } }
                                td { (r.contact_time.as_deref().unwrap_or("")) }
                                td.num { (duration(r.duration_ms)) }
                                td.detail { (r.detail.as_deref().unwrap_or("")) }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="6" { "No calls match." } } }
                    }
                }
            }
            nav.pages aria-label="Pages" {
                @if page_no > 0 { a href=(link(page_no - 1)) { "Newer" } }
                @if more { a href=(link(page_no + 1)) { "Older" } }
            }
        },
    ))
}

pub async fn one(session: Session, State(s): State<ConsoleState>, Path(id): Path<i64>) -> Result<Markup, PageError> {
    let catalog = s.catalog.clone();
    let scope = session.tenant().map(ToString::to_string);
    let detail = blocking(move || catalog.console().call(id, scope.as_deref()))
        .await?
        .ok_or_else(PageError::not_found)?;
    let c = &detail.call;
    let title = c.conversation_id.clone().unwrap_or_else(|| "(no id)".into());
    let fields: Vec<(String, String)> = detail
        .fields
        .as_deref()
        .and_then(|f| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(f).ok())
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect()
        })
        .unwrap_or_default();
    Ok(page(
        &format!("Call {title}"),
        &session,
        html! {
            h1 { "Call " (title) }
            dl.facts {
                dt { "Tenant" } dd { (c.tenant) }
                dt { "State" } dd { span class=(format!("state s-{}", c.state)) { (c.state) } @if let Some(d) = &c.detail { " — " (d) } }
                dt { "Agent" } dd { (detail.agent.as_deref().unwrap_or("")) }
                dt { "Contact time" } dd { (c.contact_time.as_deref().unwrap_or("")) }
                dt { "Length" } dd { (duration(c.duration_ms)) }
                dt { "Received" } dd { (c.received_at) " via " (detail.via) }
            }
            @if c.state == "failed" || c.state == "expired" {
                form method="post" action=(format!("/console/calls/{id}/retry")) {
                    (csrf_field(&session))
                    button type="submit" { "Retry" }
                }
            }
            h2 { "Recordings" }
            ul.recordings {
                @for r in &detail.recordings {
                    li {
                        strong { (r.name) } " " (r.bytes.map(|b| bytesize::ByteSize::b(b as u64).to_string()).unwrap_or_default())
                        " " (duration(r.duration_ms))
                        @if let Some(key) = &r.key { br; "forwarded to " code { (key) } }
                        @if let Some(file) = r.file_id {
                            @let src = format!("/console/audio/{}/{file}", c.tenant);
                            @if crate::dropbox::is_transcript(&r.name) {
                                br; a href=(src) { "Open the transcript" }
                            } @else {
                                br; audio controls preload="none" src=(src) aria-label=(format!("Play {}", r.name)) {
                                    a href=(src) { "Download " (r.name) }
                                }
                            }
                        } @else { br; "not arrived" }
                    }
                }
            }
            h2 { "Sends and report lines" }
            div.scroll { table {
                caption.visually-hidden { "Every send of this conversation" }
                thead { tr { th scope="col" { "Metadata file" } th scope="col" { "Row" } th scope="col" { "Status" } th scope="col" { "Detail" } th scope="col" { "Received" } } }
                tbody { @for send in &detail.sends { tr {
                    td { (send.metadata_file) } td.num { (send.row) }
                    td { (send.state) @if send.updated { " (updated)" } }
                    td.detail { (send.detail.as_deref().unwrap_or("")) } td { (send.received_at) }
                } } }
            } }
            @if !detail.deliveries.is_empty() {
                h2 { "Delivered" }
                ul.plain { @for (sink, prefix, at) in &detail.deliveries { li { code { (sink) " " (prefix) } " at " (at) } } }
            }
            h2 { "Fields" }
            dl.facts { @for (k, v) in &fields { dt { (k) } dd { (v) } } }
        },
    ))
}

pub async fn retry(
    session: Session,
    State(s): State<ConsoleState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    form: axum::Form<CsrfOnly>,
) -> Result<Redirect, PageError> {
    session.check_form(&headers, &form.csrf)?;
    let (catalog, scope) = (s.catalog.clone(), session.tenant().map(ToString::to_string));
    let grace = s.http.config.get().matching.grace.as_millis() as i64;
    let retried = blocking(move || {
        let Some(detail) = catalog.console().call(id, scope.as_deref())? else {
            return Ok(None);
        };
        // Only this conversation, and only if a retry can change it (a rejected row has no id,
        // and a retry without one would take every failed conversation of the tenant).
        let call = &detail.call;
        let (Some(conversation), "failed" | "expired") = (call.conversation_id.as_deref(), call.state.as_str()) else {
            return Ok(Some(0));
        };
        let now = crate::catalog::now_ms();
        catalog
            .reports()
            .retry(Some(&call.tenant), Some(conversation), now, grace)
            .map(Some)
    })
    .await?;
    match retried {
        None => return Err(PageError::not_found()),
        Some(0) => {
            return Err(PageError::new(
                StatusCode::CONFLICT,
                "Only a failed or expired call can be retried.",
            ));
        }
        Some(_) => {}
    }
    Ok(Redirect::to(&format!("/console/calls/{id}")))
}

/// A recording of `tenant`'s, streamed; one byte range when asked (`Range: bytes=a-b`).
pub async fn audio(
    session: Session,
    State(s): State<ConsoleState>,
    Path((tenant, file)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if !session.may_see(&tenant) {
        return Err(PageError::not_found());
    }
    let (catalog, drops, who) = (s.catalog.clone(), s.uploads.drops.clone(), tenant.clone());
    let opened = blocking(move || -> Result<Option<(std::fs::File, u64, String)>, String> {
        let Some(found) = catalog
            .console()
            .recording_file(&who, file)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let id = TenantId::parse(&who).map_err(|e| e.to_string())?;
        let in_drop = RelPath::parse(&found.rel_path)
            .filter(|_| found.present)
            .and_then(|rel| drops.open_confined(&id, &rel).ok());
        let file = match (in_drop, &found.archive_path) {
            (Some(f), _) => f,
            (None, Some(archived)) => match crate::fsutil::open_nofollow(std::path::Path::new(archived)) {
                Ok(f) => f,
                Err(_) => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        Ok(Some((file, size, found.rel_path)))
    })
    .await?
    .ok_or_else(PageError::not_found)?;
    let (mut file, size, name) = opened;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(Range::Whole, |v| byte_range(v, size));
    let (status, start, len) = match range {
        Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Range::Unsatisfiable => {
            let unsatisfiable = [(header::CONTENT_RANGE, format!("bytes */{size}"))];
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, unsatisfiable).into_response());
        }
        Range::Whole => (StatusCode::OK, 0, size),
    };
    file.seek(SeekFrom::Start(start)).map_err(PageError::internal)?;
    let stream = tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        media_type(&name).parse().map_err(PageError::internal)?,
    );
    h.insert(header::ACCEPT_RANGES, "bytes".parse().map_err(PageError::internal)?);
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(
        header::CACHE_CONTROL,
        "private, max-age=300".parse().map_err(PageError::internal)?,
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1)
                .parse()
                .map_err(PageError::internal)?,
        );
    }
    Ok(response)
}

/// What a `Range` header asks of a file (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// Bytes `a` to `b`, both included.
    Part(u64, u64),
    /// A well-formed range that starts past the end: 416.
    Unsatisfiable,
    /// None, or one we do not read (another unit, malformed): the whole file, as RFC 9110 says.
    Whole,
}

/// The first range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, against a file of `size` bytes.
pub fn byte_range(header: &str, size: u64) -> Range {
    let Some(spec) = header.strip_prefix("bytes=").and_then(|s| s.split(',').next()) else {
        return Range::Whole;
    };
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |t: &str| t.trim().parse::<u64>().ok();
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => match number(n) {
            Some(0) => return Range::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            None => return Range::Whole,
        },
        (a, "") => match number(a) {
            Some(a) => (a, size.saturating_sub(1)),
            None => return Range::Whole,
        },
        (a, b) => match (number(a), number(b)) {
            (Some(a), Some(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
            _ => return Range::Whole,
        },
    };
    if size == 0 || start >= size {
        Range::Unsatisfiable
    } else {
        Range::Part(start, end)
    }
}

fn media_type(name: &str) -> &'static str {
    if crate::dropbox::is_transcript(name) {
        return "application/json";
    }
    match crate::matching::extension(name).as_deref() {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("flac") => "audio/flac",
        Some("ogg" | "opus") => "audio/ogg",
        Some("m4a") => "audio/mp4",
        Some("aiff" | "aif") => "audio/aiff",
        Some("au") => "audio/basic",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::{Range, byte_range};

    #[test]
    fn ranges_are_read_as_browsers_send_them() {
        assert_eq!(byte_range("bytes=0-", 100), Range::Part(0, 99));
        assert_eq!(byte_range("bytes=10-19", 100), Range::Part(10, 19));
        assert_eq!(byte_range("bytes=90-200", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=-500", 100), Range::Part(0, 99));
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-", 0), Range::Unsatisfiable);
        // What is not a range we read is answered with the whole file (RFC 9110).
        assert_eq!(byte_range("bytes=5-4", 100), Range::Whole);
        assert_eq!(byte_range("items=0-1", 100), Range::Whole);
        assert_eq!(byte_range("bytes=x-", 100), Range::Whole);
        assert_eq!(byte_range("bytes=99999999999999999999-", 100), Range::Whole);
    }
}
