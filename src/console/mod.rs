//! The web console (SPEC §11): server-rendered pages on the `[http]` listener, for operators
//! (onboarding, tenants, every tenant's calls) and for tenants (their own calls, a batch
//! uploaded from the browser). Plain HTML forms; the only script is `console.js` (the upload's
//! progress bar), served by the binary like the style sheet, under a Content-Security-Policy
//! that forbids inline script and every other origin.
//!
//! It reads the catalog and the configuration, and changes tenants through `onboard` exactly as
//! the operator API does; a batch goes through the upload API's arrival path.

pub mod batch;
pub mod calls;
pub mod charts;
pub mod onboarding;
pub mod session;
pub mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::catalog::Catalog;
use crate::ingress::http::HttpShared;
use crate::ingress::http::calls::UploadState;
use crate::ingress::http::signed::Signer;
use crate::limits::Limits;
use session::Session;

/// What the console's pages need.
#[derive(Clone)]
pub struct ConsoleState {
    pub http: HttpShared,
    pub catalog: Catalog,
    pub limits: Arc<Limits>,
    pub signer: Arc<Signer>,
    /// The batch page stores files as the upload API does.
    pub uploads: UploadState,
    /// Applies the configuration files as they are now (what SIGHUP does).
    pub reload: crate::ops::admin_api::Reload,
}

impl ConsoleState {
    /// `[http] public_url`: where browsers reach the console.
    fn public_url(&self) -> String {
        let config = self.http.config.get();
        config.http.as_ref().map(|h| h.public_url.clone()).unwrap_or_default()
    }

    /// Cookies only over HTTPS when the console is served over it.
    fn secure_cookies(&self) -> bool {
        let config = self.http.config.get();
        config
            .http
            .as_ref()
            .is_some_and(|h| h.tls.is_some() || h.public_url.starts_with("https://"))
    }
}

pub fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(home))
        .route("/console/login", get(session::sign_in_page).post(session::sign_in))
        .route("/console/logout", post(session::sign_out))
        .route("/console/tenants", get(tenants::list))
        .route("/console/tenants/{id}", get(tenants::one))
        .route("/console/tenants/{id}/settings", post(tenants::settings))
        .route("/console/tenants/{id}/keys", post(tenants::add_key))
        .route("/console/tenants/{id}/mapping", post(tenants::mapping))
        .route("/console/onboard", get(onboarding::start))
        .route("/console/onboard/sample", post(onboarding::sample))
        .route("/console/onboard/create", post(onboarding::create))
        .route("/console/calls", get(calls::list))
        .route("/console/calls/{id}", get(calls::one))
        .route("/console/calls/{id}/retry", post(calls::retry))
        .route("/console/audio/{tenant}/{file}", get(calls::audio))
        // The batch's files stream, each within `max_upload_bytes`, not the JSON limit.
        .route(
            "/console/upload",
            get(batch::form)
                .post(batch::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/console/upload/{tenant}/{upload}", get(batch::result))
        .route("/console/static/console.css", get(style))
        .route("/console/static/console.js", get(script))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Every console answer: no inline script, nothing from elsewhere, not framed, not cached.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn home(session: Session) -> Redirect {
    if session.is_admin() {
        Redirect::to("/console/tenants")
    } else {
        Redirect::to("/console/calls")
    }
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../assets/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../assets/console.js"),
    )
}

/// A page: the navigation for who is signed in, then `body`.
pub fn page(title: &str, session: &Session, body: Markup) -> Markup {
    let who = match session.tenant() {
        Some(t) => t.to_string(),
        None => "operator".to_owned(),
    };
    layout(
        title,
        html! {
            header.top {
                a.brand href="/console/" { "dropsync" }
                nav aria-label="Main" {
                    ul {
                        @if session.is_admin() {
                            li { a href="/console/tenants" { "Tenants" } }
                            li { a href="/console/onboard" { "Onboard" } }
                        }
                        li { a href="/console/calls" { "Calls" } }
                        li { a href="/console/upload" { "Batch upload" } }
                    }
                }
                form.signout method="post" action="/console/logout" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    span.who { (who) }
                    button.link type="submit" { "Sign out" }
                }
            }
            main id="main" { (body) }
        },
    )
}

/// A page for nobody signed in (sign-in, errors).
pub fn page_without_session(title: &str, body: Markup) -> Markup {
    layout(
        title,
        html! {
            header.top { a.brand href="/console/" { "dropsync" } }
            main id="main" { (body) }
        },
    )
}

fn layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dropsync" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                (content)
            }
        }
    }
}

/// A hidden CSRF field for a form of `session`'s.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Why a page cannot be shown: sign in first, or a status with a sentence.
#[derive(Debug)]
pub enum PageError {
    SignIn,
    Status(StatusCode, String),
}

impl PageError {
    pub fn new(status: StatusCode, why: impl Into<String>) -> PageError {
        PageError::Status(status, why.into())
    }
    pub fn not_found() -> PageError {
        PageError::new(
            StatusCode::NOT_FOUND,
            "There is nothing here, or it is not yours to see.",
        )
    }
    pub fn internal(what: impl std::fmt::Display) -> PageError {
        tracing::error!(error = %what, "console page failed");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Something failed on our side: {what}"),
        )
    }
}

/// The operator API's answer to the same request, as a page: its status, and what it says.
impl From<crate::ingress::http::error::ApiError> for PageError {
    fn from(e: crate::ingress::http::error::ApiError) -> PageError {
        if e.details.is_empty() {
            PageError::new(e.status, e.error)
        } else {
            PageError::new(e.status, format!("{}: {}", e.error, e.details.join("; ")))
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn => Redirect::to("/console/login").into_response(),
            PageError::Status(status, why) => {
                let body = page_without_session(
                    status.canonical_reason().unwrap_or("Error"),
                    html! {
                        h1 { (status.canonical_reason().unwrap_or("Error")) }
                        p.error role="alert" { (why) }
                        p { a href="/console/" { "Back to the console" } }
                    },
                );
                (status, body).into_response()
            }
        }
    }
}

/// Runs catalog or file work on a blocking thread; a failure is a 500 page.
pub async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    call: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(PageError::internal)?
        .map_err(PageError::internal)
}

/// Milliseconds as `m:ss`.
pub fn duration(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => {
            let s = (ms + 999) / 1000;
            format!("{}:{:02}", s / 60, s % 60)
        }
        None => "—".into(),
    }
}
