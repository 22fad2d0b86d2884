//! The onboarding wizard (SPEC §11), as a QA platform onboards a contact centre: a sample of its
//! metadata file → the four fields mapped with drop-downs (the columns that fit each field
//! first, what does not fit beside it) and its SSH key pasted → "Generate SFTP credentials"
//! (host, port, username, the host key fingerprints, and its API token, shown once) → retention
//! and minute allocation. The tenant is written and in force at the third step: it can log in
//! over SFTP while the operator is still reading its credentials.

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::session::Session;
use super::{ConsoleState, PageError, csrf_field, page};
use crate::onboard::{self, NewTenant};
use crate::ops::sample::{self, SampleReport};

/// The fields mapped, whether each is required, and what it is.
const FIELDS: [(&str, bool, &str); 4] = [
    ("conversation_id", false, "Conversation id"),
    ("agent", true, "Agent"),
    ("contact_time", true, "Contact date and time"),
    ("recording", false, "Recording file name"),
];

fn steps(current: usize) -> Markup {
    html! {
        ol.steps aria-label="Steps" {
            @for (i, name) in ["Sample", "Mapping and key", "Credentials", "Retention"].iter().enumerate() {
                @if i == current { li aria-current="step" { (name) } } @else { li { (name) } }
            }
        }
    }
}

pub async fn start(session: Session) -> Result<Markup, PageError> {
    session.admin_only()?;
    Ok(page(
        "Onboard a tenant",
        &session,
        html! {
            h1 { "Onboard a tenant" }
            (steps(0))
            form.stack method="post" action="/console/onboard/sample" enctype="multipart/form-data" {
                (csrf_field(&session))
                label for="file" { "A sample of the contact centre's metadata file" }
                p.hint id="file-hint" { "CSV, TSV, JSON or JSON Lines: its first rows are read to suggest a mapping." }
                input #file type="file" name="file" required accept=".csv,.tsv,.json,.jsonl,.ndjson,text/csv" aria-describedby="file-hint";
                button type="submit" { "Read the sample" }
            }
        },
    ))
}

pub async fn sample(
    session: Session,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Markup, PageError> {
    session.admin_only()?;
    let bad = |e: axum::extract::multipart::MultipartError| PageError::new(StatusCode::BAD_REQUEST, e.body_text());
    // The CSRF field comes first, so nothing of the file is read for a forged form.
    let csrf = match form.next_field().await.map_err(bad)? {
        Some(f) if f.name() == Some("csrf") => super::batch::small_text(f).await?,
        _ => String::new(),
    };
    session.check_form(&headers, &csrf)?;
    let field = form
        .next_field()
        .await
        .map_err(bad)?
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "Choose a sample file."))?;
    let kind = field.content_type().unwrap_or("").to_owned();
    let bytes = field.bytes().await.map_err(bad)?;
    let format = sample::format_of(&kind, &bytes);
    let matching = s.http.config.get().matching.clone();
    let report = super::blocking(move || {
        Ok::<_, std::convert::Infallible>(sample::suggest(
            &bytes,
            format,
            None,
            &matching.recording_extensions,
            matching.max_field_bytes,
        ))
    })
    .await?;
    Ok(mapping_page(&session, &report, &Entered::default(), None))
}

/// What the operator typed in the mapping step, shown again when it must be corrected.
#[derive(Default)]
struct Entered {
    id: String,
    timezone: String,
    key: String,
    chosen: Vec<(String, String)>,
}

fn mapping_page(session: &Session, report: &SampleReport, entered: &Entered, error: Option<&str>) -> Markup {
    let chosen = |field: &str| entered.chosen.iter().find(|(f, _)| f == field).map(|(_, c)| c.as_str());
    page(
        "Onboard a tenant: mapping",
        session,
        html! {
            h1 { "Onboard a tenant" }
            (steps(1))
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if !report.problems.is_empty() {
                section.notes aria-label="What the sample shows" {
                    h2 { "What the sample shows" }
                    ul { @for p in &report.problems { li { (p) } } }
                }
            }
            form.stack method="post" action="/console/onboard/create" {
                (csrf_field(session))
                @for c in &report.columns { input type="hidden" name="column" value=(c); }
                label for="id" { "Tenant id (its SFTP user name)" }
                p.hint id="id-hint" { "Lower-case letters, digits, - and _." }
                input #id name="id" required pattern="[a-z0-9][a-z0-9_-]{0,62}" value=(entered.id) aria-describedby="id-hint";
                label for="timezone" { "Time zone of its date-times" }
                input #timezone name="timezone" value=(if entered.timezone.is_empty() { "UTC" } else { &entered.timezone });
                fieldset {
                    legend { "Which column holds each field" }
                    @for (field, required, what) in FIELDS {
                        @let fits = report.fit.get(field).map(Vec::as_slice).unwrap_or_default();
                        @let selected = chosen(field).or_else(|| report.suggested_mapping.get(field).map(String::as_str));
                        @let problem = fits.iter().find(|f| Some(f.column.as_str()) == selected).and_then(|f| f.problem.clone());
                        div.field {
                            label for=(field) { (what) @if required { " (required)" } }
                            select id=(field) name=(field) aria-describedby=(format!("{field}-note")) {
                                @if !required { option value="" selected[selected.is_none()] { "(none)" } }
                                @for f in fits {
                                    option value=(f.column) selected[Some(f.column.as_str()) == selected] {
                                        (f.column) " — " (format!("{:.0}", f.share * 100.0)) "% of rows fit"
                                    }
                                }
                                @if fits.is_empty() {
                                    @for c in &report.columns {
                                        option value=(c) selected[Some(c.as_str()) == selected] { (c) }
                                    }
                                }
                            }
                            p.note id=(format!("{field}-note")) {
                                @match &problem { Some(p) => span.error { (p) }, None => "" }
                            }
                        }
                    }
                }
                label for="key" { "The contact centre's SSH public key" }
                p.hint id="key-hint" { "One OpenSSH line: ssh-ed25519 AAAA… or ecdsa-sha2-… or ssh-rsa (2048 bits or more)." }
                textarea #key name="key" rows="4" required aria-describedby="key-hint" { (entered.key) }
                button type="submit" { "Generate SFTP credentials" }
            }
        },
    )
}

pub async fn create(
    session: Session,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    session.admin_only()?;
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
            .trim()
    };
    session.check_form(&headers, value("csrf"))?;
    let entered = Entered {
        id: value("id").to_owned(),
        timezone: value("timezone").to_owned(),
        key: value("key").to_owned(),
        chosen: FIELDS
            .iter()
            .map(|(f, _, _)| ((*f).to_owned(), value(f).to_owned()))
            .collect(),
    };
    let mut mapping = serde_json::Map::new();
    for (field, column) in &entered.chosen {
        if !column.is_empty() {
            mapping.insert(field.clone(), column.clone().into());
        }
    }
    let token = crate::ingress::http::tokens::new_token();
    let spec = NewTenant {
        id: entered.id.clone(),
        keys: entered.key.clone(),
        timezone: Some(entered.timezone.clone()).filter(|t| !t.is_empty()),
        mapping: Some(mapping),
        api_token: Some(token.clone()),
        ..NewTenant::default()
    };
    let (config, reload) = (s.http.config.get(), s.reload.clone());
    let done = tokio::task::spawn_blocking(move || onboard::create(&config, &spec).map(|o| (o, reload())))
        .await
        .map_err(PageError::internal)?;
    let onboarded = match done {
        Ok((onboarded, Ok(_))) => onboarded,
        Ok((_, Err(problems))) => return Err(PageError::internal(problems.join("; "))),
        Err(e) => {
            let (status, why) = match PageError::from(crate::ops::admin_api::onboard_error(e)) {
                PageError::Status(status, why) => (status, why),
                other => return Err(other),
            };
            // Shown again with what was typed, and why it was refused.
            let report = SampleReport {
                columns: pairs
                    .iter()
                    .filter(|(k, _)| k == "column")
                    .map(|(_, v)| v.clone())
                    .collect(),
                suggested_mapping: Default::default(),
                problems: Vec::new(),
                fit: Default::default(),
            };
            return Ok((status, mapping_page(&session, &report, &entered, Some(&why))).into_response());
        }
    };
    tracing::info!(tenant = %onboarded.username, "tenant created (console)");
    let id = onboarded.username.clone();
    Ok(page(
        "Onboard a tenant: credentials",
        &session,
        html! {
            h1 { "Onboard a tenant" }
            (steps(2))
            p.ok role="status" { "Tenant " strong { (id) } " is created and can log in over SFTP now." }
            section.credentials aria-label="SFTP credentials" {
                h2 { "SFTP credentials" }
                dl {
                    dt { "Host" } dd { code { (onboarded.host.as_deref().unwrap_or("(no SFTP listener)")) } }
                    dt { "Port" } dd { code { (onboarded.port.map(|p| p.to_string()).unwrap_or_default()) } }
                    dt { "Username" } dd { code #username { (id) } }
                    dt { "Host key fingerprints" }
                    dd { ul.plain { @for f in &onboarded.host_key_fingerprints { li { code.fingerprint { (f) } } } } }
                    dt { "Upload API token" }
                    dd { code #api-token { (token) } p.hint { "Shown once: keep it now (it is kept in tenants.d/" (id) ".tokens, mode 0600)." } }
                }
            }
            (steps(3))
            form.stack method="post" action=(format!("/console/tenants/{id}/settings")) {
                (csrf_field(&session))
                label for="retention" { "Retention of local copies" }
                p.hint id="retention-hint" { "e.g. 30d; empty for the default" }
                input #retention name="retention" aria-describedby="retention-hint";
                label for="minute_allocation" { "Minute allocation per month" }
                p.hint id="allocation-hint" { "empty for no allocation" }
                input #minute_allocation name="minute_allocation" inputmode="numeric" aria-describedby="allocation-hint";
                button type="submit" { "Save and finish" }
            }
        },
    )
    .into_response())
}
