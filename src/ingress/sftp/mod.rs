//! The SFTP endpoint (SPEC §3): an SSH server (russh) that serves only the `sftp` subsystem,
//! one tenant per user name, public keys only, each tenant confined to its drop folder.
//!
//! Layout: [`handler`] is the thin russh handler, [`session`] the SFTP protocol loop,
//! [`fs`] the confined file system, [`auth`] keys and bans, [`admission`] who may connect.
//! This module owns the listener: the accept loop, the login grace, and the sessions logged in.
//! Completed uploads leave as [`IngressEvent::Arrived`]; SFTP code never matches anything.

pub mod admission;
pub mod auth;
pub mod failures;
pub mod fs;
pub mod handler;
pub mod host_keys;
pub mod key_options;
pub mod listing;
pub mod ops;
pub mod penalties;
pub mod pending;
pub mod session;
pub mod upload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use russh::keys::ssh_key::PrivateKey;
use russh::{MethodKind, MethodSet, SshId};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use russh::keys::ssh_key::public::KeyData;

use crate::config::LiveConfig;
use crate::config::SftpConfig;
use crate::dropbox::DropRoot;
use crate::ingress::{IngressEvent, OwnRenames};
use crate::limits::Limits;
use crate::tenant::TenantId;
use admission::{Admission, Admitted, refusal};
use auth::KeyStore;

#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error(transparent)]
    HostKey(#[from] host_keys::HostKeyError),
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
}

/// A logged-in session, registered so that a reload or a stop can end it.
pub struct LoggedIn {
    pub tenant: TenantId,
    /// The key it logged in with.
    pub key: KeyData,
    /// How to disconnect it.
    pub handle: russh::server::Handle,
    /// Its uploads in flight (a stop waits for them).
    pub uploads: Arc<AtomicUsize>,
    /// Ends its connection.
    pub kick: CancellationToken,
}

/// What every connection shares.
pub struct Shared {
    keys: RwLock<Arc<KeyStore>>,
    pub drops: DropRoot,
    pub arrivals: mpsc::Sender<IngressEvent>,
    /// Client RENAMEs the sessions announce themselves, for the watcher to leave alone.
    pub own_renames: OwnRenames,
    pub limits: SftpConfig,
    pub quotas: Arc<Limits>,
    pub config: LiveConfig,
    pub tracker: TaskTracker,
    /// Uploads open in any session, seen by their tenant under their final names.
    pub pending: Arc<pending::PendingUploads>,
    ssh: Arc<russh::server::Config>,
    /// Logged-in sessions (taken at login, not at connect).
    pub sessions: Arc<Semaphore>,
    /// Who may connect.
    admission: Arc<Admission>,
    /// Logged-in sessions, so that a key or tenant removed by a reload can be disconnected.
    logged_in: Mutex<HashMap<u64, LoggedIn>>,
    next_session: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn keys(&self) -> Arc<KeyStore> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Swaps the keys (config reload). Sessions go on, except those whose key (or tenant) the
    /// reload removed: they end at once, as sshd's do not (a revoked key must not keep a door
    /// open).
    pub fn set_keys(&self, keys: KeyStore) {
        let keys = Arc::new(keys);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.clone();
        let revoked: Vec<(TenantId, CancellationToken)> = self
            .logged_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| !keys.has(&s.tenant, &s.key))
            .map(|s| (s.tenant.clone(), s.kick.clone()))
            .collect();
        for (tenant, kick) in revoked {
            tracing::info!(tenant = %tenant, "ending a session whose key or tenant a reload removed");
            kick.cancel();
        }
    }

    pub fn register(&self, session: LoggedIn) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.logged_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, session);
        metrics::gauge!("dropsync_sftp_sessions").increment(1.0);
        id
    }

    /// A stop: sessions with no upload in flight are disconnected at once; the others as soon
    /// as their uploads close, or at `deadline` (an upload cut then is discarded, never ingested).
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let mut told = std::collections::HashSet::new();
        loop {
            let now = tokio::time::Instant::now();
            let sessions: Vec<(u64, russh::server::Handle, usize)> = self
                .logged_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, s)| (*id, s.handle.clone(), s.uploads.load(Ordering::Relaxed)))
                .collect();
            if sessions.is_empty() {
                return;
            }
            for (id, handle, uploads) in sessions {
                if (uploads == 0 || now >= deadline) && told.insert(id) {
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "dropsync is stopping".into(),
                            "en".into(),
                        )
                        .await;
                }
            }
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn deregister(&self, id: u64) {
        if self
            .logged_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .is_some()
        {
            metrics::gauge!("dropsync_sftp_sessions").decrement(1.0);
        }
    }
}

fn ssh_config(limits: &SftpConfig, keys: Vec<PrivateKey>) -> russh::server::Config {
    russh::server::Config {
        server_id: SshId::Standard(format!("SSH-2.0-dropsync_{}", env!("CARGO_PKG_VERSION")).into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH's first "none" probe must not cost a second; real refusals still do.
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        inactivity_timeout: Some(limits.idle_timeout),
        max_auth_attempts: 10,
        // Throughput: a large window and packets. russh 0.65 grows the window as data arrives,
        // not as we consume it, so the window bounds nothing we hold: what a channel holds is
        // its buffer (`channel_buffer_size` messages of at most `maximum_packet_size`, 4 MiB
        // here), then the session's own budgets (`session::WRITE_BUDGET`, `READ_BUDGET`); past
        // them russh stops reading the connection and TCP holds the client back. The session
        // never waits for its replies to leave (see `session::replies`): a full buffer stops
        // russh's connection loop, which is also what writes them.
        window_size: 64 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 64,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            key: std::borrow::Cow::Borrowed(host_keys::ALGORITHMS),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Offered ciphers, AES-GCM first (fastest with AES-NI; russh leaves aes128-gcm out by default,
/// and OpenSSH clients asked for it fail without it). The client's order still decides.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The SFTP endpoint, ready to accept.
pub struct SftpServer {
    shared: Arc<Shared>,
}

/// What the SFTP endpoint needs from the rest of the daemon.
pub struct SftpDeps {
    pub drops: DropRoot,
    pub arrivals: mpsc::Sender<IngressEvent>,
    pub own_renames: OwnRenames,
    pub quotas: Arc<Limits>,
    /// The configuration in force (which names are recordings).
    pub config: LiveConfig,
    pub tracker: TaskTracker,
    /// Failed logins, counted with the HTTP API's.
    pub bans: Arc<crate::ingress::bans::Bans>,
}

impl SftpServer {
    pub fn new(limits: SftpConfig, keys: KeyStore, deps: SftpDeps) -> Result<SftpServer, SftpError> {
        let host_keys = host_keys::load_or_create_all(&limits.host_keys)?;
        let shared = Shared {
            keys: RwLock::new(Arc::new(keys)),
            pending: Arc::default(),
            drops: deps.drops,
            arrivals: deps.arrivals,
            own_renames: deps.own_renames,
            ssh: Arc::new(ssh_config(&limits, host_keys)),
            sessions: Arc::new(Semaphore::new(limits.max_sessions as usize)),
            admission: Arc::new(Admission::new(&limits, deps.bans.clone())),
            logged_in: Mutex::new(HashMap::new()),
            next_session: std::sync::atomic::AtomicU64::new(1),
            limits,
            quotas: deps.quotas,
            config: deps.config,
            tracker: deps.tracker,
        };
        Ok(SftpServer {
            shared: Arc::new(shared),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts connections until cancelled.
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            self.admit(stream, peer, cancel.clone());
        }
    }

    fn admit(&self, stream: tokio::net::TcpStream, peer: SocketAddr, cancel: CancellationToken) {
        let shared = &self.shared;
        let ip = peer.ip();
        let kick = CancellationToken::new();
        let Some(Admitted { startup, address }) = shared.admission.admit(peer, &kick) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        self.shared.tracker.spawn(async move {
            // Every startup slot was taken: one of the fattest source's was freed for us.
            let Some(startup) = startup.ready().await else {
                tracing::warn!(peer = %peer, "connection refused: no startup slot came free");
                refusal("startups");
                return;
            };
            let mut conn = handler::Connection::new(shared.clone(), ip);
            conn.startup = Some(startup);
            conn.kick = kick.clone();
            let (authenticated, refused, login) = (conn.authenticated.clone(), conn.refused.clone(), conn.login.clone());
            // Once a login was tried, how the connection ends is told by the login's own line.
            let failed_login = || refused.load(Ordering::Relaxed) || login.lock().unwrap_or_else(|p| p.into_inner()).failed();
            let tried_login = || authenticated.load(Ordering::Relaxed) || failed_login();
            // One deadline for the handshake and the login: a client that never speaks (or
            // never logs in) is dropped at it.
            let now = tokio::time::Instant::now();
            let deadline = now + shared.limits.login_grace;
            // A peer that does not even say which SSH it speaks has a shorter grace. A stop
            // during the handshake ends it too.
            let silent_deadline = deadline.min(now + shared.limits.silent_grace);
            let handshake =
                tokio::time::timeout_at(silent_deadline, russh::server::run_stream(shared.ssh.clone(), stream, conn));
            // Whether it was dropped for sitting out the login grace time (a penalty).
            let mut grace_exceeded = false;
            let handshake = tokio::select! {
                r = handshake => r.ok(),
                _ = cancel.cancelled() => None,
                _ = kick.cancelled() => None,
            };
            match handshake {
                Some(Ok(running)) => {
                    let handle = running.handle();
                    let mut running = std::pin::pin!(running);
                    let kicked = || async {
                        let _ = handle.disconnect(russh::Disconnect::ByApplication, "the key or tenant of this session was removed".into(), "en".into()).await;
                    };
                    // A stop, or the end of the login grace time. (A `select!` condition is read
                    // once, when the select starts: whether the peer has logged in is read here,
                    // when one of them comes.)
                    let stop_or_grace = async {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep_until(deadline) => {}
                        }
                    };
                    tokio::select! {
                        r = &mut running => failures::log_end(peer, r, tried_login()),
                        // Its key or tenant was removed by a reload: the connection ends now.
                        _ = kick.cancelled() => kicked().await,
                        _ = stop_or_grace => {
                            if !authenticated.load(Ordering::Relaxed) {
                                grace_exceeded = !cancel.is_cancelled();
                                let why = if grace_exceeded { "login grace time over" } else { "dropsync is stopping" };
                                tracing::info!(peer = %peer, "{why}: disconnecting a connection that has not logged in");
                                let _ = handle.disconnect(russh::Disconnect::ByApplication, why.into(), "en".into()).await;
                            }
                            // A logged-in session is ended by its client, a reload, or a stop's
                            // drain (which waits for its uploads).
                            tokio::select! {
                                r = &mut running => failures::log_end(peer, r, tried_login()),
                                _ = kick.cancelled() => kicked().await,
                            }
                        }
                    }
                }
                Some(Err(e)) => failures::log_end(peer, Err(e), false),
                None => {
                    grace_exceeded = !cancel.is_cancelled();
                    tracing::info!(peer = %peer, "no ssh handshake within the grace time (or a stop); disconnecting");
                }
            }
            if authenticated.load(Ordering::Relaxed) {
                shared.admission.bans.succeeded(ip);
                shared.admission.penalties.forgive(ip);
            } else if failed_login() {
                login.lock().unwrap_or_else(|p| p.into_inner()).log_failed(peer);
                refusal("login_refused");
                if shared.admission.bans.failed(ip) {
                    tracing::warn!(peer = %peer, ban = ?shared.limits.ban_time, "address banned after repeated failed logins");
                }
            } else if !cancel.is_cancelled() {
                let how = if grace_exceeded { penalties::NoLogin::GraceExceeded } else { penalties::NoLogin::Closed };
                if shared.admission.penalties.penalise(ip, how) {
                    tracing::warn!(peer = %peer, "source penalised: its connections do not log in (sftp.penalty_exempt lists sources never penalised)");
                }
            }
            // Counted once the penalty is recorded, so the count tells when it is.
            if grace_exceeded {
                refusal("login_grace");
            }
            drop(address);
        });
    }
}
