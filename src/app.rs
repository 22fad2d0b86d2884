//! Wiring: start-up and tear-down order, in one place.
//!
//! Start-up: open the catalog (migrations) and recover interrupted forwards; make the drop
//! folders; start watching them, then queue a reconciliation scan of each (so nothing falls in
//! between); start the intake lanes, forward workers, reports and housekeeping as workers
//! under one cancellation token; READY. The scans run after READY, like any other work.
//! Tear-down: cancel, let in-flight work land, up to a drain deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::Archiver;
use crate::catalog::{Catalog, now_ms};
use crate::config::{self, Config, LiveConfig};
use crate::dropbox::DropRoot;
use crate::forwarding::{ForwardWorker, Forwarder, Sink};
use crate::housekeeping::Housekeeper;
use crate::ingress::bans::Bans;
use crate::ingress::ftp_poll::{FtpPollers, PollContext};
use crate::ingress::http::HttpShared;
use crate::ingress::http::calls;
use crate::ingress::http::signed::{self, Signer};
use crate::ingress::http::tokens::Tokens;
use crate::ingress::sftp::Shared as SftpShared;
use crate::ingress::sftp::auth::KeyStore;
use crate::ingress::sftp::{SftpDeps, SftpServer};
use crate::ingress::{IngressEvent, OwnRenames, watch};
use crate::intake::{Intake, lanes};
use crate::limits::{Limits, UsageWorker};
use crate::ops;
use crate::reports::Reporter;
use crate::tenant::TenantId;
use crate::worker::{Liveness, Workers};

/// How long in-flight work may take to land after a stop is asked for (below systemd's
/// default TimeoutStopSec of 90 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the catalog `config` names: PostgreSQL at `[catalog] url` (SPEC §12), or SQLite in
/// `state_dir`; created and migrated if need be.
pub fn open_catalog(config: &Config) -> anyhow::Result<Catalog> {
    match &config.catalog.url {
        Some(url) => Catalog::open_postgres(url).context("opening the PostgreSQL catalog ([catalog] url)"),
        None => Catalog::open(&config.db_path()).with_context(|| format!("opening {}", config.db_path().display())),
    }
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process: take it over before anything else, so a reload
    // asked for during start-up waits for the reload task instead.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let config = Arc::new(config);
    let catalog = open_catalog(&config)?.for_node(&config.catalog.node_id, config.catalog.lease);
    let started_at = now_ms();
    catalog.set_busy_timeout(config.catalog.busy_timeout)?;
    let recovered = catalog.forward_queue().recover(now_ms())?;
    if recovered > 0 {
        tracing::warn!(recovered, "conversations interrupted mid-forward are queued again");
    }
    let drops = DropRoot::new(config.drop_root());
    for t in &config.tenants {
        drops
            .ensure_tenant(&t.id)
            .with_context(|| format!("creating the drop folder of {}", t.id))?;
    }
    // Before any session can start: SFTP uploads a crash cut short are removed, and those whose
    // CLOSE was answered but whose rename may not have reached the disk are put in place.
    for t in &config.tenants {
        match crate::arrival::recover::recover_uploads(&drops.tenant_dir(&t.id)) {
            Ok((0, 0)) => {}
            Ok((renamed, removed)) => {
                tracing::info!(tenant = %t.id, renamed, removed, "uploads left by a stop were recovered")
            }
            Err(e) => tracing::warn!(tenant = %t.id, error = %e, "cannot recover uploads left by a stop"),
        }
    }
    let sink = Sink::from_config(&config.sink).await.context("setting up the sink")?;
    let archiver = Archiver {
        catalog: catalog.clone(),
        drop: drops.clone(),
        archive_root: config.archive_root(),
    };
    // Moves to the archive that a stop cut short: no move is in flight yet.
    archiver.settle_stale(i64::MAX)?;
    let forwarder_wake = Arc::new(Notify::new());
    let reports_wake = Arc::new(Notify::new());

    let (tx, rx) = mpsc::channel(8192);
    let own_renames = OwnRenames::default();
    let live = LiveConfig::new(config.clone());
    let liveness = Arc::new(Liveness::default());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let workers = Workers::new(tracker.clone(), cancel.clone(), liveness.clone());
    let quotas = Limits::new(live.clone());
    workers.spawn(UsageWorker {
        limits: quotas.clone(),
        drops: Arc::new(drops.clone()),
        last_walk: Duration::ZERO,
    });
    // Metrics first, so that the workers' first counts are kept.
    if let Some(m) = &config.metrics {
        let listener = tokio::net::TcpListener::bind(m.listen)
            .await
            .with_context(|| format!("binding the metrics listener on {}", m.listen))?;
        if let Some(handle) = ops::metrics::install() {
            tracing::info!(listen = %listener.local_addr()?, "metrics listening (/metrics, /healthz)");
            tracker.spawn(ops::metrics::serve(
                listener,
                handle,
                catalog.clone(),
                live.clone(),
                liveness.clone(),
                cancel.clone(),
            ));
        }
    }
    // The SFTP listener is bound before anything else is announced, so a port in use fails
    // the start-up rather than a client later.
    let mut sftp_shared = None;
    // Failed logins over SFTP and HTTP count together, with `[sftp]`'s limits (or its defaults).
    let bans = Arc::new(match &config.sftp {
        Some(s) => Bans::new(s.max_auth_failures, s.ban_time),
        None => Bans::default(),
    });
    if let Some(sftp) = &config.sftp {
        let listener = tokio::net::TcpListener::bind(sftp.listen)
            .await
            .with_context(|| format!("binding the SFTP listener on {}", sftp.listen))?;
        let keys = KeyStore::from_tenants(&config.tenants).context("loading tenants' SSH keys")?;
        let deps = SftpDeps {
            drops: drops.clone(),
            arrivals: tx.clone(),
            own_renames: own_renames.clone(),
            quotas: quotas.clone(),
            config: live.clone(),
            tracker: tracker.clone(),
            bans: bans.clone(),
        };
        let server = SftpServer::new(sftp.clone(), keys, deps).context("setting up the SFTP server")?;
        tracing::info!(listen = %listener.local_addr()?, "sftp listening");
        sftp_shared = Some(server.shared());
        tracker.spawn(server.run(listener, cancel.clone()));
    }
    let http_listener = match &config.http {
        Some(h) => Some(
            tokio::net::TcpListener::bind(h.listen)
                .await
                .with_context(|| format!("binding the HTTP listener on {}", h.listen))?,
        ),
        None => None,
    };
    let watch = watch::start(drops.clone(), tx.clone(), own_renames).context("watching the drop folders")?;
    tracker.spawn(watch.run(cancel.clone()));
    let intake = Intake {
        catalog: catalog.clone(),
        drop: drops.clone(),
        config: live.clone(),
        archiver: archiver.clone(),
        forwarder: forwarder_wake.clone(),
        reports: reports_wake.clone(),
        quotas: quotas.clone(),
    };
    // The reconciliation scans are ordinary work items, asked for now (the watch is already in
    // place, so nothing falls in between) and done by the lanes after READY: a large backlog
    // never holds up start-up. The channel is empty yet, so this never waits.
    let _ = tx.try_send(IngressEvent::Rescan { tenant: None });
    let intake_wake = Arc::new(Notify::new());
    workers.spawn(lanes::Recorder::new(rx, intake.clone(), intake_wake.clone()));
    let scheduler = Arc::new(lanes::Scheduler::new(intake_wake.clone()));
    for index in 0..config.intake.lanes as usize {
        workers.spawn(lanes::Lane {
            index,
            intake: intake.clone(),
            scheduler: scheduler.clone(),
            found: lanes::Found::default(),
        });
    }
    // Pollers start after the scan, with the watcher already in place, like any other ingress.
    let pollers = Arc::new(FtpPollers::new(
        PollContext {
            catalog: catalog.clone(),
            drops: drops.clone(),
            config: live.clone(),
            events: tx.clone(),
            quotas: quotas.clone(),
        },
        workers.clone(),
    ));
    pollers.apply(&config.tenants);
    let forwarder = Arc::new(Forwarder {
        catalog: catalog.clone(),
        drop: drops.clone(),
        sink,
        archiver: archiver.clone(),
        retry_min: config.forwarding.retry_min,
        retry_max: config.forwarding.retry_max,
        grace: config.matching.grace,
        wake: forwarder_wake.clone(),
        reports: reports_wake.clone(),
        config: live.clone(),
        last_served: Default::default(),
    });
    for index in 0..config.forwarding.workers {
        workers.spawn(ForwardWorker {
            index,
            forwarder: forwarder.clone(),
        });
    }
    workers.spawn(Reporter::new(catalog.clone(), drops.clone(), reports_wake.clone()));
    workers.spawn(Housekeeper {
        catalog: catalog.clone(),
        drop: drops.clone(),
        archiver,
        grace: config.matching.grace,
        config: live.clone(),
        limits: quotas.clone(),
        reports: reports_wake,
    });
    workers.spawn(ops::keeper::Keeper {
        catalog: catalog.clone(),
        started_at,
        forwarders: forwarder_wake.clone(),
    });
    tracker.close();
    tracker.spawn(ops::watchdog(catalog.clone(), liveness.clone(), cancel.clone()));
    let (tls, certificates) = match config.http.as_ref().and_then(|h| h.tls.as_ref()) {
        Some((cert, key)) => {
            let (acceptor, certificates) =
                crate::ingress::http::tls::acceptor(cert, key).context("loading [http] tls_cert and tls_key")?;
            (Some(acceptor), Some(certificates))
        }
        None => (None, None),
    };
    let http = match &config.http {
        Some(_) => Some(HttpShared {
            certificates,
            config: live.clone(),
            tokens: Arc::new(std::sync::RwLock::new(Arc::new(
                Tokens::load(&config).context("reading the API tokens")?,
            ))),
            bans: bans.clone(),
        }),
        None => None,
    };
    let reloader = Arc::new(Reloader {
        live,
        forwarder_wake: forwarder_wake.clone(),
        sftp: sftp_shared.clone(),
        pollers,
        drops: drops.clone(),
        http: http.clone(),
    });
    if let (Some(listener), Some(shared), Some(limits)) = (http_listener, http, config.http.clone()) {
        let apply = reloader.clone();
        let signer = Signer::load_or_create(&config.state_dir.join(signed::KEY_FILE))
            .context("reading or creating the upload URL signing key")?;
        let signer = Arc::new(signer);
        let upload_state = calls::UploadState {
            http: shared.clone(),
            signer: signer.clone(),
            drops: drops.clone(),
            limits: quotas.clone(),
            events: tx.clone(),
            catalog: catalog.clone(),
            pending: config.pending_dir(),
        };
        let uploads = calls::routes(upload_state.clone());
        let reload: ops::admin_api::Reload = Arc::new(move || apply.apply());
        let console = crate::console::routes(crate::console::ConsoleState {
            http: shared.clone(),
            catalog: catalog.clone(),
            limits: quotas.clone(),
            signer,
            uploads: upload_state,
            reload: reload.clone(),
        });
        let router = ops::admin_api::routes(ops::admin_api::AdminState {
            http: shared,
            catalog: catalog.clone(),
            reload,
        })
        .merge(uploads)
        .merge(console)
        .route("/api/openapi.json", axum::routing::get(openapi))
        // JSON and form bodies; uploads stream and have their own limit.
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_json_bytes as usize));
        tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), "http listening");
        tracker.spawn(crate::ingress::http::serve(
            listener,
            router,
            limits,
            bans.clone(),
            tls,
            tracker.clone(),
            cancel.clone(),
        ));
    }
    tracker.spawn(reload_on_hangup(hangups, reloader, cancel.clone()));
    tracing::info!(tenants = config.tenants.len(), sink = %forwarder.sink.describe(), state_dir = %config.state_dir.display(), "dropsync is running");
    ops::ready();

    shutdown.await;
    ops::stopping();
    tracing::info!("stopping: finishing in-flight work");
    cancel.cancel();
    drop(tx);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    if let Some(sftp) = &sftp_shared {
        sftp.drain(deadline).await;
    }
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        tracing::warn!("in-flight work did not finish within {DRAIN_TIMEOUT:?}; it is replayed at the next start");
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reload the configuration and the included tenant files. A broken file keeps the old
/// configuration in force and logs every problem.
async fn reload_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: Arc<Reloader>,
    cancel: CancellationToken,
) {
    let Some(mut hup) = hangups else {
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        let _ = reloader.apply();
    }
}

/// What a configuration change reaches: SIGHUP, and the operator API's changes to tenants.
struct Reloader {
    live: LiveConfig,
    forwarder_wake: Arc<Notify>,
    sftp: Option<Arc<SftpShared>>,
    pollers: Arc<FtpPollers>,
    drops: DropRoot,
    http: Option<HttpShared>,
}

impl Reloader {
    /// Loads the configuration files as they are now and puts them in force, or logs every
    /// problem and keeps the old one.
    fn apply(&self) -> Result<String, Vec<String>> {
        let applied = reload(
            &self.live,
            self.sftp.as_deref(),
            &self.pollers,
            &self.drops,
            self.http.as_ref(),
        );
        match &applied {
            Ok(summary) => {
                tracing::info!("configuration reloaded: {summary}");
                // A raised minute allocation releases held conversations now.
                self.forwarder_wake.notify_one();
            }
            Err(problems) => {
                for p in problems {
                    tracing::error!("reload refused: {p}");
                }
                tracing::error!(
                    problems = problems.len(),
                    "configuration NOT reloaded; the previous one stays in force"
                );
            }
        }
        applied
    }
}

/// `GET /api/openapi.json`: generated from the handlers' types.
async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    let mut doc = ops::admin_api::AdminApi::openapi();
    doc.merge(calls::UploadApi::openapi());
    crate::ingress::http::error::document_common_errors(&mut doc);
    doc.info.title = "dropsync".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    axum::Json(doc)
}

fn reload(
    live: &LiveConfig,
    sftp: Option<&SftpShared>,
    pollers: &FtpPollers,
    drops: &DropRoot,
    http: Option<&HttpShared>,
) -> Result<String, Vec<String>> {
    let old = live.get();
    let new = config::load(&old.file).map_err(|e| e.problems.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let runtime = config::check_runtime(&new);
    if !runtime.is_empty() {
        return Err(runtime.iter().map(ToString::to_string).collect());
    }
    let keys = KeyStore::from_tenants(&new.tenants).map_err(|e| vec![e.to_string()])?;
    let tokens = Tokens::load(&new).map_err(|e| vec![e.to_string()])?;
    for t in &new.tenants {
        drops
            .ensure_tenant(&t.id)
            .map_err(|e| vec![format!("creating the drop folder of {}: {e}", t.id)])?;
    }
    // What a reload cannot change in a running daemon.
    let restart = |what: &str, changed: bool| {
        if changed {
            tracing::warn!("{what} changed: it takes effect at the next restart");
        }
    };
    restart("state_dir", new.state_dir != old.state_dir);
    restart("[sftp]", format!("{:?}", new.sftp) != format!("{:?}", old.sftp));
    restart("[sink]", format!("{:?}", new.sink) != format!("{:?}", old.sink));
    restart(
        "[forwarding]",
        format!("{:?}", new.forwarding) != format!("{:?}", old.forwarding),
    );
    let ids = |c: &Config| c.tenants.iter().map(|t| t.id.clone()).collect::<Vec<TenantId>>();
    let (old_ids, new_ids) = (ids(&old), ids(&new));
    let added: Vec<String> = new_ids
        .iter()
        .filter(|t| !old_ids.contains(t))
        .map(ToString::to_string)
        .collect();
    let removed: Vec<TenantId> = old_ids.into_iter().filter(|t| !new_ids.contains(t)).collect();
    // Read once by the listener; the rest of [http] is read at each request.
    let listener_reads = |c: &Config| {
        c.http.as_ref().map(|h| {
            let listen = (h.listen, h.tls.is_some(), h.header_timeout, h.max_json_bytes);
            (listen, h.max_connections, h.max_connections_per_ip)
        })
    };
    restart(
        "[http] listen, TLS on or off, connection limits, header_timeout or max_json_bytes",
        listener_reads(&new) != listener_reads(&old),
    );
    // A renewed certificate is served from the next handshake. One that cannot be read keeps
    // the one in force, and refuses nothing else: a tenant's change or a key's removal must
    // not wait for a certificate.
    if let (Some(certificates), Some((cert, key))) = (
        http.and_then(|h| h.certificates.as_ref()),
        new.http.as_ref().and_then(|h| h.tls.as_ref()),
    ) && let Err(e) = certificates.reload(cert, key)
    {
        tracing::error!("[http] tls_cert and tls_key not reloaded, the certificate in force stays: {e}");
    }
    let count = new.tenants.len();
    let new = Arc::new(new);
    live.set(new.clone());
    if let Some(sftp) = sftp {
        sftp.set_keys(keys);
    }
    if let Some(http) = http {
        http.set_tokens(tokens);
    }
    let (started, stopped) = pollers.apply(&new.tenants);
    let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
    Ok(format!(
        "{count} tenants; added [{}]; removed [{}]; FTP pollers started {started}, stopped {stopped}",
        added.join(", "),
        removed.join(", ")
    ))
}
