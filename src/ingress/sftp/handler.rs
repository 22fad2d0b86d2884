//! The russh handler for one connection: a thin translation layer. It authenticates by public
//! key only, accepts session channels, starts the `sftp` subsystem, and answers every other
//! request (shell, exec, pty, env, X11, agent) with a failure so that no client hangs waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};

use super::Shared;
use super::auth::Refusal;
use super::failures::LoginAttempts;
use super::fs::TenantFs;
use super::session::{SessionCtx, serve};
use crate::limits::SessionGrant;
use crate::tenant::TenantId;
use russh::keys::ssh_key::public::KeyData;

pub struct Connection {
    pub shared: Arc<Shared>,
    pub peer: IpAddr,
    pub tenant: Option<TenantId>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Set once a key was accepted (read by the login-grace timer).
    pub authenticated: Arc<AtomicBool>,
    /// Set once the client tried to authenticate with something we checked and refused.
    pub refused: Arc<AtomicBool>,
    /// Our entry in the logged-in registry.
    registered: Option<u64>,
    /// Uploads open in this connection's SFTP sessions.
    open_uploads: Arc<std::sync::atomic::AtomicUsize>,
    /// Counts this session against its tenant's `sessions` quota while it lasts.
    session_grant: Option<SessionGrant>,
    /// SFTP channels of this connection being served now.
    open_channels: Arc<std::sync::atomic::AtomicUsize>,
    /// The key it logged in with: a reload that removes it ends the session.
    key: Option<KeyData>,
    /// Cancelled to end this connection (its key or tenant was removed by a reload).
    pub kick: tokio_util::sync::CancellationToken,
    /// Held until login: the connection counts against `max_startups` until then.
    pub startup: Option<super::admission::StartupSlot>,
    /// Held from login: the connection counts against `max_sessions` from then.
    session_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Refused login attempts, logged by the listener if the connection ends without a login.
    pub login: Arc<std::sync::Mutex<LoginAttempts>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(id) = self.registered {
            self.shared.deregister(id);
        }
    }
}

impl Connection {
    pub fn new(shared: Arc<Shared>, peer: IpAddr) -> Self {
        Connection {
            shared,
            peer,
            tenant: None,
            channels: HashMap::new(),
            authenticated: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicBool::new(false)),
            registered: None,
            open_uploads: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            session_grant: None,
            open_channels: Arc::default(),
            key: None,
            kick: Default::default(),
            startup: None,
            session_slot: None,
            login: Arc::default(),
        }
    }

    fn refused_login(&self, user: &str, tried: String, reason: &str) {
        self.login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refused(user, tried, reason);
    }

    fn public_key_only() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Self::public_key_only())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        tracing::info!(peer = %self.peer, user, "password login refused: public keys only");
        self.refused_login(user, "password".into(), "public keys only");
        self.refused.store(true, Ordering::Relaxed);
        Ok(Self::public_key_only())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.refused_login(user, "keyboard-interactive".into(), "public keys only");
        self.refused.store(true, Ordering::Relaxed);
        Ok(Self::public_key_only())
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Clients offer each key they have: an unknown one marks the connection as refused,
        // which counts as one failed login only if it never authenticates.
        match self
            .shared
            .keys()
            .check(user, offer.public_key, offer.algorithm, self.peer, now_secs())
        {
            Ok(_) => {
                self.login
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .accepted(user, tried(offer.public_key, offer.algorithm));
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                // A key a client merely has is no news; one of the tenant's keys turned away is.
                if refusal != Refusal::UnknownKey {
                    tracing::warn!(peer = %self.peer, user, "sftp key refused: {}", refusal.reason());
                }
                self.refused_login(user, tried(offer.public_key, offer.algorithm), &refusal.reason());
                self.refused.store(true, Ordering::Relaxed);
                Ok(Self::public_key_only())
            }
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self
            .shared
            .keys()
            .check(user, key.public_key, key.algorithm, self.peer, now_secs())
        {
            Ok(tenant) => {
                tracing::info!(peer = %self.peer, tenant = %tenant, "sftp login");
                self.tenant = Some(tenant);
                self.key = Some(key.public_key.key_data().clone());
                self.authenticated.store(true, Ordering::Relaxed);
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                tracing::warn!(peer = %self.peer, user, "sftp login refused: {}", refusal.reason());
                self.refused_login(user, tried(key.public_key, key.algorithm), &refusal.reason());
                self.refused.store(true, Ordering::Relaxed);
                Ok(Self::public_key_only())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // Logged in: no longer a startup; now one of the sessions.
        self.startup = None;
        match self.shared.sessions.clone().try_acquire_owned() {
            Ok(slot) => self.session_slot = Some(slot),
            Err(_) => {
                tracing::warn!(peer = %self.peer, max = self.shared.limits.max_sessions, "sftp session refused: too many sessions");
                super::admission::refusal("sessions");
                self.tenant = None;
                return session.disconnect(
                    russh::Disconnect::TooManyConnections,
                    "too many sessions (sftp.max_sessions); try again later",
                    "en",
                );
            }
        }
        if let Some(tenant) = &self.tenant {
            match self.shared.quotas.open_session(tenant) {
                Ok(grant) => self.session_grant = Some(grant),
                Err(e) => {
                    tracing::warn!(peer = %self.peer, tenant = %tenant, error = %e, "sftp session refused");
                    super::admission::refusal("quota_sessions");
                    self.tenant = None;
                    return session.disconnect(russh::Disconnect::TooManyConnections, &e.to_string(), "en");
                }
            }
            if let Some(key) = self.key.clone() {
                self.registered = Some(self.shared.register(super::LoggedIn {
                    tenant: tenant.clone(),
                    key,
                    handle: session.handle(),
                    uploads: self.open_uploads.clone(),
                    kick: self.kick.clone(),
                }));
            }
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open = self.channels.len() + self.open_channels.load(Ordering::Relaxed);
        if self.tenant.is_some() && open < self.shared.limits.max_channels as usize {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
        } else if self.tenant.is_some() {
            tracing::warn!(peer = %self.peer, max = self.shared.limits.max_channels,
                "channel refused: too many at once on one connection (sftp.max_channels)");
            super::admission::refusal("channels");
        }
        // A channel not accepted is refused when `reply` is dropped.
        Ok(())
    }

    async fn subsystem_request(&mut self, id: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        let (Some(tenant), true) = (self.tenant.clone(), name == "sftp") else {
            tracing::info!(peer = %self.peer, subsystem = name, "subsystem refused: only sftp is served");
            return session.channel_failure(id);
        };
        let Some(channel) = self.channels.remove(&id) else {
            return session.channel_failure(id);
        };
        let fs = match TenantFs::new(
            self.shared.drops.tenant_dir(&tenant),
            tenant.as_str(),
            self.shared.pending.clone(),
            self.shared.own_renames.clone(),
        ) {
            Ok(fs) => fs,
            Err(e) => {
                tracing::warn!(peer = %self.peer, tenant = %tenant, error = %e, "cannot open the tenant's drop folder");
                return session.channel_failure(id);
            }
        };
        session.channel_success(id)?;
        let ctx = SessionCtx {
            fs,
            tenant,
            arrivals: self.shared.arrivals.clone(),
            max_file_size: self.shared.limits.max_file_size,
            max_handles: self.shared.limits.max_handles as usize,
            fsync_on_close: self.shared.limits.fsync_on_close,
            open_uploads: self.open_uploads.clone(),
            quotas: self.shared.quotas.clone(),
            config: self.shared.config.clone(),
        };
        let handle = session.handle();
        let open_channels = self.open_channels.clone();
        open_channels.fetch_add(1, Ordering::Relaxed);
        self.shared.tracker.spawn(async move {
            // As sshd does when its sftp subsystem ends: scp (SFTP mode) reads a channel closed
            // without an exit status as a failure, and exits 1 after a good upload. The status
            // goes out before the stream is dropped, which closes the channel.
            let status = handle.clone();
            serve(channel.into_stream(), ctx, async move {
                let _ = status.exit_status_request(id, 0).await;
            })
            .await;
            open_channels.fetch_sub(1, Ordering::Relaxed);
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
        });
        Ok(())
    }

    async fn shell_request(&mut self, id: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "shell refused: sftp only");
        session.channel_failure(id)
    }

    async fn exec_request(&mut self, id: ChannelId, _data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "exec refused: sftp only");
        session.channel_failure(id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)
    }

    async fn x11_request(
        &mut self,
        id: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)
    }

    async fn agent_request(&mut self, _id: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// A key a client tried, as the log shows it: its signature algorithm and fingerprint.
fn tried(key: &russh::keys::PublicKey, algorithm: &russh::keys::Algorithm) -> String {
    format!(
        "publickey {algorithm} {}",
        key.fingerprint(russh::keys::HashAlg::Sha256)
    )
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
