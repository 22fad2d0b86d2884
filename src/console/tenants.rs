//! The Tenants page: each tenant's conversations per state, minutes used of its allocation, what
//! it holds of its quota and its FTP sources (last poll, last error); one tenant's page adds its
//! pictures (conversations per day, minutes over the month) and the forms that change its
//! retention, allocation, time zone and keys, written through `onboard` as the operator API does.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Datelike, Offset, TimeZone};
use maud::{Markup, html};
use serde::Deserialize;

use super::charts::{self, Day};
use super::session::Session;
use super::{ConsoleState, PageError, blocking, csrf_field, page};
use crate::catalog::StatusView;
use crate::config::Config;
use crate::onboard::{self, OnboardError};
use crate::tenant::Tenant;

/// The states shown as columns, in this order.
const COLUMNS: [&str; 6] = ["forwarded", "waiting", "held", "rejected", "expired", "failed"];
/// Days the per-day picture covers.
const DAYS: i64 = 30;

pub async fn list(session: Session, State(s): State<ConsoleState>) -> Result<Response, PageError> {
    if let Some(t) = session.tenant() {
        return Ok(Redirect::to(&format!("/console/tenants/{t}")).into_response());
    }
    let config = s.http.config.get();
    let (catalog, cfg) = (s.catalog.clone(), config.clone());
    let status = blocking(move || crate::ops::status::view(&cfg, &catalog, None)).await?;
    Ok(page(
        "Tenants",
        &session,
        html! {
            div.heading {
                h1 { "Tenants" }
                a.button href="/console/onboard" { "Onboard a tenant" }
            }
            (table(html! { @for t in &config.tenants { (tenant_row(&s, t, &status)) } }))
        },
    )
    .into_response())
}

/// The tenants table around `rows`.
fn table(rows: Markup) -> Markup {
    html! {
        div.scroll {
            table {
                caption.visually-hidden { "Conversations by state, minutes, quota and FTP sources" }
                thead { tr {
                    th scope="col" { "Tenant" }
                    @for c in COLUMNS { th scope="col" { (c) } }
                    th scope="col" { "Minutes this month" }
                    th scope="col" { "Quota used" }
                    th scope="col" { "FTP sources" }
                } }
                tbody { (rows) }
            }
        }
    }
}

fn tenant_row(s: &ConsoleState, t: &Tenant, status: &StatusView) -> Markup {
    let id = t.id.as_str();
    let states = status.tenants.get(id);
    let count = |state: &str| {
        states.map_or(0, |st| {
            st.states
                .iter()
                .filter(|(k, _)| *k == state || (state == "waiting" && (*k == "ready" || *k == "forwarding")))
                .map(|(_, n)| n)
                .sum::<i64>()
        })
    };
    html! {
        tr {
            th scope="row" { a href=(format!("/console/tenants/{id}")) { (id) } }
            @for c in COLUMNS { td.num { (count(c)) } }
            td { (minutes_text(status, id)) }
            td { (quota_text(s, id)) }
            td { (sources(status, id)) }
        }
    }
}

fn minutes_text(status: &StatusView, id: &str) -> String {
    match status.minutes.get(id) {
        Some(m) => match m.minute_allocation {
            Some(a) => format!("{:.0} of {a}", m.minutes_used.ceil()),
            None => format!("{:.0} (no allocation)", m.minutes_used.ceil()),
        },
        None => "—".into(),
    }
}

fn quota_text(s: &ConsoleState, id: &str) -> String {
    let (bytes, files, quota) = s.limits.held(id);
    let size = |b: u64| bytesize::ByteSize::b(b).to_string();
    match quota.bytes {
        Some(max) => format!("{} of {}, {files} files", size(bytes), size(max)),
        None => format!("{}, {files} files", size(bytes)),
    }
}

fn sources(status: &StatusView, id: &str) -> Markup {
    html! {
        @let mine: Vec<_> = status.ftp_sources.iter().filter(|f| f.tenant == id).collect();
        @if mine.is_empty() { "none" }
        ul.plain {
            @for f in mine {
                li {
                    code { (f.url) } " — last poll " (f.last_poll_at.as_deref().unwrap_or("never"))
                    @if let Some(e) = &f.last_error { br; span.error { "last error: " (e) } }
                }
            }
        }
    }
}

pub async fn one(session: Session, State(s): State<ConsoleState>, Path(id): Path<String>) -> Result<Markup, PageError> {
    if !session.may_see(&id) {
        return Err(PageError::not_found());
    }
    let config = s.http.config.get();
    let t = config.tenant(&id).ok_or_else(PageError::not_found)?.clone();
    let (catalog, cfg, who) = (s.catalog.clone(), config.clone(), id.clone());
    let status = blocking(move || crate::ops::status::view(&cfg, &catalog, Some(&who))).await?;
    let pictures = pictures(&s, &t, &status).await?;
    Ok(page(
        &format!("Tenant {id}"),
        &session,
        html! {
            h1 { "Tenant " (id) }
            (table(tenant_row(&s, &t, &status)))
            p { a href=(format!("/console/calls?tenant={id}")) { "See its calls" } }
            (pictures)
            @if session.is_admin() { (settings_forms(&session, &t)) }
        },
    ))
}

/// The tenant's two pictures, for the last [`DAYS`] days and this month in its time zone.
async fn pictures(s: &ConsoleState, t: &Tenant, status: &StatusView) -> Result<Markup, PageError> {
    let now = chrono::Utc::now();
    let local = now.with_timezone(&t.timezone);
    let offset_ms = i64::from(local.offset().fix().local_minus_utc()) * 1000;
    let today = (now.timestamp_millis() + offset_ms).div_euclid(86_400_000);
    let first = today - DAYS + 1;
    let month = local.format("%Y-%m").to_string();
    let month_start = t
        .timezone
        .with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .earliest()
        .map_or(now.timestamp_millis(), |d| d.timestamp_millis());
    let (catalog, id, m) = (s.catalog.clone(), t.id.to_string(), month.clone());
    let since = (first * 86_400_000 - offset_ms).min(month_start) - 31 * 86_400_000;
    let (days, minutes) = blocking(move || {
        let console = catalog.console();
        let days = console.days(&id, first * 86_400_000 - offset_ms, offset_ms)?;
        let minutes = console.minutes_by_day(&id, &m, since, offset_ms)?;
        Ok::<_, crate::catalog::CatalogError>((days, minutes))
    })
    .await?;
    let per_day: Vec<Day> = (first..=today)
        .map(|d| Day {
            label: chrono::DateTime::from_timestamp(d * 86_400, 0)
                .map(|t| t.format("%m-%d").to_string())
                .unwrap_or_default(),
            counts: days
                .iter()
                .filter(|(day, _, _)| *day == d)
                .map(|(_, state, n)| (state.clone(), *n))
                .collect(),
        })
        .collect();
    let month_first_day = (month_start + offset_ms).div_euclid(86_400_000);
    let used_by_day: Vec<(u32, i64)> = minutes
        .iter()
        .filter(|(d, _)| *d >= month_first_day)
        .map(|(d, secs)| ((d - month_first_day + 1) as u32, *secs))
        .collect();
    let days_in_month = days_in(local.year(), local.month());
    let allocation = status.minutes.get(t.id.as_str()).and_then(|m| m.minute_allocation);
    Ok(html! {
        section.pictures aria-label="Pictures" {
            div { h2 { "Conversations per day" } (charts::per_day("per-day", &per_day)) }
            div { h2 { "Minutes used this month" } (charts::minutes("minutes", &month, days_in_month, &used_by_day, allocation)) }
        }
    })
}

fn days_in(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.pred_opt())
        .map_or(30, |d| d.day())
}

fn settings_forms(session: &Session, t: &Tenant) -> Markup {
    let id = t.id.as_str();
    let retention = t
        .retention
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default();
    let allocation = t.allocation.map(|a| a.minutes.to_string()).unwrap_or_default();
    html! {
        section {
            h2 { "Settings" }
            form.stack method="post" action=(format!("/console/tenants/{id}/settings")) {
                (csrf_field(session))
                label for="retention" { "Retention of local copies" }
                p.hint id="retention-hint" { "e.g. 30d; empty for the default" }
                input #retention name="retention" value=(retention) aria-describedby="retention-hint";
                label for="minute_allocation" { "Minute allocation per month" }
                p.hint id="allocation-hint" { "empty for no allocation" }
                input #minute_allocation name="minute_allocation" inputmode="numeric" value=(allocation) aria-describedby="allocation-hint";
                label for="timezone" { "Time zone" }
                input #timezone name="timezone" value=(t.timezone.name());
                button type="submit" { "Save settings" }
            }
            h2 { "Mapping" }
            form.stack method="post" action=(format!("/console/tenants/{id}/mapping")) {
                (csrf_field(session))
                @for (field, label, value) in mapping_fields(t) {
                    label for=(format!("m-{field}")) { (label) }
                    input id=(format!("m-{field}")) name=(field) value=(value);
                }
                p.hint { "The column of the tenant's files that holds each field; empty where it has none (a date and a clock in two columns are kept)." }
                button type="submit" { "Save the mapping" }
            }
            h2 { "SFTP keys" }
            ul.plain { @for k in &t.authorized_keys { li { code.key { (k) } } } }
            form.stack method="post" action=(format!("/console/tenants/{id}/keys")) {
                (csrf_field(session))
                label for="key" { "Add a public key (OpenSSH)" }
                textarea #key name="key" rows="3" required {}
                button type="submit" { "Add the key" }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct Settings {
    csrf: String,
    retention: String,
    minute_allocation: String,
    timezone: Option<String>,
}

pub async fn settings(
    session: Session,
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: axum::Form<Settings>,
) -> Result<Redirect, PageError> {
    session.admin_only()?;
    session.check_form(&headers, &form.csrf)?;
    let mut changes = serde_json::Map::new();
    let text = |v: &str| {
        let v = v.trim();
        if v.is_empty() {
            serde_json::Value::Null
        } else {
            v.into()
        }
    };
    changes.insert("retention".into(), text(&form.retention));
    let allocation = match form.minute_allocation.trim() {
        "" => serde_json::Value::Null,
        n => n.parse::<u64>().map(Into::into).map_err(|_| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                format!("Minute allocation: {n:?} is not a number of minutes."),
            )
        })?,
    };
    changes.insert("minute_allocation".into(), allocation);
    if let Some(tz) = form.timezone.as_deref().filter(|t| !t.trim().is_empty()) {
        changes.insert("timezone".into(), tz.trim().into());
    }
    let who = id.clone();
    apply(&s, move |config| onboard::change(config, &who, &changes)).await?;
    tracing::info!(tenant = %id, "tenant changed (console)");
    Ok(Redirect::to(&format!("/console/tenants/{id}")))
}

/// The mapping's fields as the form shows them: (form field, label, column).
fn mapping_fields(t: &Tenant) -> Vec<(&'static str, &'static str, String)> {
    let m = &t.mapping;
    let time = match &m.time {
        crate::tenant::TimeColumns::Single { column, .. } => column.clone(),
        crate::tenant::TimeColumns::Split { .. } => String::new(),
    };
    vec![
        (
            "conversation_id",
            "Conversation id column",
            m.conversation_id.clone().unwrap_or_default(),
        ),
        ("agent", "Agent column", m.agent.clone()),
        ("contact_time", "Contact date-time column", time),
        (
            "recording",
            "Recording file name column",
            m.recording.clone().unwrap_or_default(),
        ),
    ]
}

#[derive(Deserialize)]
pub struct MappingForm {
    csrf: String,
    conversation_id: String,
    agent: String,
    contact_time: String,
    recording: String,
}

/// Changes the four fields' columns; what the form does not show (a time format, a date and a
/// clock in two columns, required columns) is kept.
pub async fn mapping(
    session: Session,
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: axum::Form<MappingForm>,
) -> Result<Redirect, PageError> {
    session.admin_only()?;
    session.check_form(&headers, &form.csrf)?;
    let config = s.http.config.get();
    let t = config.tenant(&id).ok_or_else(PageError::not_found)?;
    let mut m = serde_json::Map::new();
    let mut set = |key: &str, value: &str| {
        if !value.trim().is_empty() {
            m.insert(key.into(), value.trim().into());
        }
    };
    set("conversation_id", &form.conversation_id);
    set("agent", &form.agent);
    set("recording", &form.recording);
    match (&t.mapping.time, form.contact_time.trim()) {
        (crate::tenant::TimeColumns::Split { date, clock }, "") => {
            set("contact_date", date);
            set("contact_clock", clock);
        }
        (crate::tenant::TimeColumns::Single { format, .. }, column) => {
            set("contact_time", column);
            set("contact_time_format", format.as_deref().unwrap_or(""));
        }
        (_, column) => set("contact_time", column),
    }
    if !t.mapping.required_columns.is_empty() {
        m.insert("required_columns".into(), t.mapping.required_columns.clone().into());
    }
    let mut changes = serde_json::Map::new();
    changes.insert("mapping".into(), m.into());
    let who = id.clone();
    apply(&s, move |config| onboard::change(config, &who, &changes)).await?;
    tracing::info!(tenant = %id, "tenant mapping changed (console)");
    Ok(Redirect::to(&format!("/console/tenants/{id}")))
}

#[derive(Deserialize)]
pub struct NewKey {
    csrf: String,
    key: String,
}

pub async fn add_key(
    session: Session,
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: axum::Form<NewKey>,
) -> Result<Redirect, PageError> {
    session.admin_only()?;
    session.check_form(&headers, &form.csrf)?;
    let (who, key) = (id.clone(), form.key.clone());
    apply(&s, move |config| onboard::add_keys(config, &who, &key)).await?;
    Ok(Redirect::to(&format!("/console/tenants/{id}")))
}

/// Runs a change to the tenant files and puts it in force, as the operator API does; what was
/// wrong is a page saying so, with the API's status.
async fn apply(
    s: &ConsoleState,
    change: impl FnOnce(&Config) -> Result<(), OnboardError> + Send + 'static,
) -> Result<(), PageError> {
    crate::ops::admin_api::apply_change(s.http.config.get(), s.reload.clone(), change)
        .await
        .map_err(PageError::from)
}
