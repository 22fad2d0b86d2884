//! Wiring: start-up and tear-down order, in one place.
//!
//! Start-up: open the catalog (migrations) and recover interrupted forwards; make the drop
//! folders; start watching them *before* the reconciliation scan so nothing falls in between;
//! then start intake, forward workers, reports and housekeeping under one cancellation token.
//! Tear-down: cancel, let in-flight work land, up to a drain deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, now_ms};
use crate::config::Config;
use crate::dropbox::DropRoot;
use crate::forwarding::{Forwarder, Sink};
use crate::housekeeping::{Archiver, Housekeeper};
use crate::ingress::sftp::SftpServer;
use crate::ingress::sftp::auth::KeyStore;
use crate::ingress::{ViaHints, watch};
use crate::intake::Intake;
use crate::ops::{self, Liveness};
use crate::reports::Reporter;

/// How long in-flight work may take to land after a stop is asked for (below systemd's
/// default TimeoutStopSec of 90 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let catalog =
        Catalog::open(&config.db_path()).with_context(|| format!("opening {}", config.db_path().display()))?;
    let recovered = catalog.recover(now_ms())?;
    if recovered > 0 {
        tracing::warn!(recovered, "conversations interrupted mid-forward are queued again");
    }
    let drops = DropRoot::new(config.drop_root());
    for t in &config.tenants {
        drops
            .ensure_tenant(&t.id)
            .with_context(|| format!("creating the drop folder of {}", t.id))?;
    }
    let sink = Sink::from_config(&config.sink).await.context("setting up the sink")?;
    let archiver = Archiver {
        catalog: catalog.clone(),
        drop: drops.clone(),
        archive_root: config.archive_root(),
    };
    let forwarder_wake = Arc::new(Notify::new());
    let reports_wake = Arc::new(Notify::new());

    let (tx, rx) = mpsc::channel(8192);
    let hints = ViaHints::default();
    let liveness = Arc::new(Liveness::default());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The SFTP listener is bound before anything else is announced, so a port in use fails
    // the start-up rather than a client later.
    if let Some(sftp) = &config.sftp {
        let listener = tokio::net::TcpListener::bind(sftp.listen)
            .await
            .with_context(|| format!("binding the SFTP listener on {}", sftp.listen))?;
        let keys = KeyStore::from_tenants(&config.tenants).context("loading tenants' SSH keys")?;
        let server = SftpServer::new(
            sftp.clone(),
            keys,
            drops.clone(),
            tx.clone(),
            hints.clone(),
            tracker.clone(),
        )
        .context("setting up the SFTP server")?;
        tracing::info!(listen = %listener.local_addr()?, "sftp listening");
        tracker.spawn(server.run(listener, cancel.clone()));
    }
    let _watch = watch::start(drops.clone(), tx.clone()).context("watching the drop folders")?;
    let intake = Intake {
        catalog: catalog.clone(),
        drop: drops.clone(),
        config: config.clone(),
        archiver: archiver.clone(),
        forwarder: forwarder_wake.clone(),
        reports: reports_wake.clone(),
        hints,
        liveness: liveness.clone(),
    };
    let scan = intake.clone();
    tokio::task::spawn_blocking(move || scan.reconcile())
        .await?
        .context("start-up scan of the drop folders")?;

    tracker.spawn(intake.run(rx, tx.clone(), tracker.clone(), cancel.clone()));
    let forwarder = Arc::new(Forwarder {
        catalog: catalog.clone(),
        drop: drops.clone(),
        sink,
        archiver,
        retry_min: config.forwarding.retry_min,
        retry_max: config.forwarding.retry_max,
        grace: config.matching.grace,
        wake: forwarder_wake.clone(),
        reports: reports_wake.clone(),
        liveness: liveness.clone(),
    });
    for i in 0..config.forwarding.workers {
        tracker.spawn(forwarder.clone().run_worker(i, cancel.clone()));
    }
    tracker.spawn(
        Reporter {
            catalog: catalog.clone(),
            drop: drops.clone(),
            wake: reports_wake.clone(),
        }
        .run(cancel.clone()),
    );
    tracker.spawn(
        Housekeeper {
            catalog: catalog.clone(),
            drop: drops.clone(),
            grace: config.matching.grace,
            retention: config.retention.local,
            reports: reports_wake,
        }
        .run(cancel.clone()),
    );
    tracker.close();
    tracker.spawn(ops::watchdog(catalog.clone(), liveness.clone(), cancel.clone()));
    tracing::info!(tenants = config.tenants.len(), sink = %forwarder.sink.describe(), state_dir = %config.state_dir.display(), "dropsync is running");
    ops::ready();

    shutdown.await;
    ops::stopping();
    tracing::info!("stopping: finishing in-flight work");
    cancel.cancel();
    drop(tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("in-flight work did not finish within {DRAIN_TIMEOUT:?}; it is replayed at the next start");
    }
    tracing::info!("stopped");
    Ok(())
}
