//! Who is signed in to the console: an operator (admin token) or a tenant (its API token), held
//! in a signed, `HttpOnly`, `SameSite=Strict` cookie that names the token by its SHA-256, so a
//! token removed from its file (or its tenant removed) ends the sessions it opened at once.
//! Every form carries the session's CSRF token, compared in constant time, and a request that a
//! browser says came from another site (`Sec-Fetch-Site`, `Origin`) is refused besides.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{ConsoleState, PageError, page_without_session};
use crate::ingress::http::Peer;
use crate::ingress::http::signed::Purpose;
use crate::ingress::http::tokens::{Caller, hash};
use crate::tenant::TenantId;

const COOKIE: &str = "dropsync_session";
/// Over HTTPS: a cookie only this host may set (no sibling subdomain can plant one).
const SECURE_COOKIE: &str = "__Host-dropsync_session";
/// A session lasts a working day.
const LIFETIME_SECS: i64 = 12 * 3600;

/// A signed-in operator or tenant.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// Every form's hidden `csrf` field.
    pub csrf: String,
    /// `[http] public_url`: an origin the forms may come from besides the request's host.
    public_url: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.caller == Caller::Admin
    }

    /// The tenant whose data alone this session sees; `None` for an operator.
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.caller {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    pub fn may_see(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|t| t.as_str() == tenant)
    }

    pub fn admin_only(&self) -> Result<(), PageError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(PageError::new(StatusCode::FORBIDDEN, "This page is for operators."))
        }
    }

    /// Checks a form's CSRF token, and that the browser did not send it from another site.
    pub fn check_form(&self, headers: &HeaderMap, presented: &str) -> Result<(), PageError> {
        same_site(headers, &self.public_url)?;
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or stale: reload the page and try again.",
            ))
        }
    }
}

/// Refuses a request a browser says was made by another site: its `Origin` must be the host it
/// asked (`Host`), or `public_url`'s (behind a proxy that rewrites `Host`).
fn same_site(headers: &HeaderMap, public_url: &str) -> Result<(), PageError> {
    let refused = || PageError::new(StatusCode::FORBIDDEN, "Refused: the request came from another site.");
    let value = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if value("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(refused());
    }
    let host_of = |url: &str| url.split_once("://").map(|(_, h)| h.trim_end_matches('/').to_owned());
    if let Some(origin) = value("origin").filter(|o| *o != "null") {
        let origin = host_of(origin);
        if origin.is_none() || (origin.as_deref() != value("host") && origin != host_of(public_url)) {
            return Err(refused());
        }
    }
    Ok(())
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = PageError;
    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Session, PageError> {
        read_cookie(&parts.headers, state).ok_or(PageError::SignIn)
    }
}

/// The session the request's cookie holds, if it is signed, unexpired and its token in force.
fn read_cookie(headers: &HeaderMap, state: &ConsoleState) -> Option<Session> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let c = c.trim();
            c.strip_prefix(SECURE_COOKIE)
                .or_else(|| c.strip_prefix(COOKIE))?
                .strip_prefix('=')
        })?;
    let mut parts = value.split('.');
    let (token_hash, csrf, expires, signature) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let expires: i64 = expires.parse().ok()?;
    let target = format!("{token_hash}.{csrf}");
    state
        .signer
        .verify_for(
            Purpose::Session,
            &target,
            expires,
            signature,
            chrono::Utc::now().timestamp(),
        )
        .ok()?;
    let hashed: [u8; 32] = hex::decode(token_hash).ok()?.try_into().ok()?;
    let caller = state.http.tokens().who_hashed(&hashed)?;
    if let Caller::Tenant(t) = &caller
        && state.http.config.get().tenant(t.as_str()).is_none()
    {
        return None;
    }
    Some(Session {
        caller,
        csrf: csrf.to_owned(),
        public_url: state.public_url(),
    })
}

pub async fn sign_in_page() -> Markup {
    sign_in_form(None)
}

fn sign_in_form(error: Option<&str>) -> Markup {
    page_without_session(
        "Sign in",
        html! {
            form.narrow method="post" action="/console/login" {
                h1 { "Sign in to dropsync" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                label for="token" { "Token" }
                p.hint id="token-hint" { "An operator's admin token, or your organisation's API token." }
                input #token type="password" name="token" autocomplete="current-password" required aria-describedby="token-hint";
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn sign_in(
    State(state): State<ConsoleState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    form: axum::Form<SignIn>,
) -> Result<Response, PageError> {
    same_site(&headers, &state.public_url())?;
    let peer = peer.map(|p| p.0.0.ip());
    let caller = match state.http.sign_in(peer, Some(form.token.trim())) {
        Ok(caller) => caller,
        Err(e) => {
            let mut page = sign_in_form(Some(&e.error)).into_response();
            *page.status_mut() = e.status;
            return Ok(page);
        }
    };
    let csrf = hex::encode(rand::random::<[u8; 16]>());
    let token_hash = hex::encode(hash(form.token.trim()));
    let expires = chrono::Utc::now().timestamp() + LIFETIME_SECS;
    let target = format!("{token_hash}.{csrf}");
    let signature = state.signer.sign_for(Purpose::Session, &target, expires);
    let (name, secure) = if state.secure_cookies() {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    let cookie = format!(
        "{name}={target}.{expires}.{signature}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
    );
    tracing::info!(who = ?caller, "console sign-in");
    let mut answer = Redirect::to("/console/").into_response();
    answer.headers_mut().insert(
        header::SET_COOKIE,
        cookie.parse().map_err(|_| PageError::internal("cookie"))?,
    );
    Ok(answer)
}

/// A form with nothing but its CSRF token (sign-out, retry).
#[derive(Deserialize)]
pub struct CsrfOnly {
    pub csrf: String,
}

pub async fn sign_out(session: Session, headers: HeaderMap, form: axum::Form<CsrfOnly>) -> Result<Response, PageError> {
    session.check_form(&headers, &form.csrf)?;
    let mut answer = Redirect::to("/console/login").into_response();
    for gone in [
        "dropsync_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        "__Host-dropsync_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
    ] {
        answer
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(gone));
    }
    Ok(answer)
}
