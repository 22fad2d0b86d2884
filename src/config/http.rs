//! `[http]` (SPEC §10): the HTTP front door's address, its upload URLs and its limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::problems::{Problems, resolve};
use super::raw::RawHttp;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The base of the upload URLs handed out (no trailing `/`).
    pub public_url: String,
    /// One admin token a line: the operator API and console.
    pub admin_tokens_file: Option<PathBuf>,
    pub upload_url_ttl: Duration,
    /// PEM certificate chain and key: HTTPS without a reverse proxy.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// Connections open at once from one address.
    pub max_connections_per_ip: u32,
    /// A request's headers must arrive within this (a slow-loris peer is closed).
    pub header_timeout: Duration,
    /// A request body must keep coming: no byte for this long ends it.
    pub body_timeout: Duration,
    /// Largest JSON (or form) body taken.
    pub max_json_bytes: u64,
    /// Largest upload taken in one PUT or POST (SPEC §10: 3 GiB zips).
    pub max_upload_bytes: u64,
}

pub(super) fn http(p: &mut Problems<'_>, base: &Path, raw: RawHttp) -> HttpConfig {
    let listen = p
        .addr("http.listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8080"))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let public_url = match raw.public_url {
        None => format!("http://{listen}"),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => url.trim_end_matches('/').to_owned(),
        Some(url) => {
            p.add("http.public_url", format!("{url:?} is not an http:// or https:// URL"));
            format!("http://{listen}")
        }
    };
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => Some((resolve(base, &cert), resolve(base, &key))),
        (None, None) => None,
        _ => {
            p.add("http.tls_cert", "tls_cert and tls_key go together");
            None
        }
    };
    HttpConfig {
        listen,
        public_url,
        admin_tokens_file: raw.admin_tokens_file.map(|f| resolve(base, &f)),
        upload_url_ttl: p.duration(
            "http.upload_url_ttl",
            raw.upload_url_ttl.as_deref(),
            Duration::from_secs(3600),
        ),
        tls,
        max_connections: raw.max_connections.unwrap_or(4096),
        max_connections_per_ip: raw.max_connections_per_ip.unwrap_or(256),
        header_timeout: p.duration(
            "http.header_timeout",
            raw.header_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        body_timeout: p.duration(
            "http.body_timeout",
            raw.body_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_json_bytes: p.size("http.max_json_bytes", raw.max_json_bytes.as_deref(), 4 << 20),
        max_upload_bytes: p.size("http.max_upload_bytes", raw.max_upload_bytes.as_deref(), 3 << 30),
    }
}
