//! The HTTP front door (SPEC §10): one listener for the upload API (this module's flows) and
//! the operator API (`ops::admin_api`), served by our own accept loop so that a connection is
//! counted, timed out and drained like an SFTP session.
//!
//! - Connections: at most `max_connections` at once, `max_connections_per_ip` per address; a
//!   banned source (failed logins over SFTP or HTTP, [`crate::ingress::bans`]) is closed at once.
//! - A request's headers must arrive within `header_timeout` (a slow-loris peer holds one
//!   connection, never a worker); headers are capped at [`MAX_HEADER_BYTES`].
//! - A stop closes idle connections and lets requests in flight finish (the tracker's drain).

pub mod batch;
pub mod calls;
pub mod chats;
pub mod error;
pub mod fields;
pub mod presigned;
pub mod signed;
pub mod tls;
pub mod tokens;
pub mod upload;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use self::error::ApiError;
use self::tokens::{Caller, Tokens};
use crate::config::{HttpConfig, LiveConfig};
use crate::ingress::bans::Bans;
use crate::tenant::TenantId;

/// Bytes of request line and headers taken at most.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// What every handler shares.
#[derive(Clone)]
pub struct HttpShared {
    pub config: LiveConfig,
    pub tokens: Arc<RwLock<Arc<Tokens>>>,
    pub bans: Arc<Bans>,
    /// The HTTPS certificate in force, read again on a reload.
    pub certificates: Option<Arc<tls::Certificates>>,
}

impl HttpShared {
    /// The tokens in force (replaced whole on a reload or a tenant's change).
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_tokens(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }

    /// Who the request's bearer token is; a wrong or missing token counts as a failed login
    /// of its source.
    fn caller(&self, parts: &Parts) -> Result<Caller, ApiError> {
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        self.sign_in(peer, presented)
    }

    /// Who `presented` is (the console's sign-in, or a bearer token); a wrong or missing one
    /// counts as a failed login of `peer`, with SFTP's.
    pub fn sign_in(&self, peer: Option<IpAddr>, presented: Option<&str>) -> Result<Caller, ApiError> {
        if let Some(ip) = peer
            && self.bans.is_banned(ip)
        {
            return Err(ApiError::forbidden(
                "too many failed logins from this address; try again later",
            ));
        }
        match presented.and_then(|t| self.tokens().who(t)) {
            Some(caller) => {
                if let Some(ip) = peer {
                    self.bans.succeeded(ip);
                }
                Ok(caller)
            }
            None => {
                if let Some(ip) = peer {
                    metrics::counter!("dropsync_http_refused_total", "reason" => "token").increment(1);
                    if self.bans.failed(ip) {
                        tracing::warn!(peer = %ip, "address banned after repeated failed logins (http)");
                    }
                }
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// Runs blocking work (the catalog, files) on a blocking thread; a failure is a 500 saying
/// `what`.
pub async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| ApiError::internal(what, e))?
        .map_err(|e| ApiError::internal(what, e))
}

/// The peer of a request's connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A request made with an admin token.
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    HttpShared: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match HttpShared::from_ref(state).caller(parts)? {
            Caller::Admin => Ok(Admin),
            Caller::Tenant(_) => Err(ApiError::forbidden("this needs an admin token")),
        }
    }
}

/// A request made with a tenant's token.
pub struct TenantCaller(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for TenantCaller
where
    HttpShared: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let shared = HttpShared::from_ref(state);
        match shared.caller(parts)? {
            Caller::Tenant(id) if shared.config.get().tenant(id.as_str()).is_some() => Ok(TenantCaller(id)),
            // A removed tenant's token stays in the file until the next reload of tokens.
            Caller::Tenant(_) => Err(ApiError::unauthorized()),
            Caller::Admin => Err(ApiError::forbidden("this needs a tenant's token")),
        }
    }
}

/// Connections per address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, u32>>);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

struct AddressSlot(Arc<PerAddress>, IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `cancel`; connections are spawned
/// on `tracker`, so a stop's drain waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpConfig,
    bans: Arc<Bans>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let per_address = Arc::new(PerAddress::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = connections.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if bans.is_banned(peer.ip()) {
            metrics::counter!("dropsync_http_refused_total", "reason" => "banned").increment(1);
            continue;
        }
        let Some(address) = per_address.take(peer.ip(), limits.max_connections_per_ip) else {
            metrics::counter!("dropsync_http_refused_total", "reason" => "per_ip").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, cancel, tls) = (router.clone(), builder.clone(), cancel.clone(), tls.clone());
        let handshake_timeout = limits.header_timeout;
        tracker.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, router, &builder, &cancel).await,
                Some(acceptor) => {
                    // The handshake is held to the header timeout too: a peer that never
                    // finishes it holds a connection no longer than one that never sends headers.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, router, &builder, &cancel).await,
                        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                    }
                }
            }
            drop((slot, address));
        });
    }
}

/// Serves one connection's requests until it ends, or until `cancel` (requests in flight
/// finish; an idle connection is closed).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    cancel: &CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
