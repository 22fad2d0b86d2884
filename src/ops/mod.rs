//! Operations around the pipeline: systemd readiness and watchdog (sd-notify), which reads the
//! workers' liveness record ([`crate::worker::Liveness`]). Without systemd (no NOTIFY_SOCKET),
//! notifications are no-ops.

pub mod admin_api;
pub mod keeper;
pub mod metrics;
pub mod sample;
pub mod status;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::worker::Liveness;

/// READY=1: migrations ran, listeners are bound, the pipeline is running.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// STOPPING=1: a stop was asked for; in-flight work is finishing.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog at half its interval, but only while the catalog answers through the
/// blocking pool and every pipeline loop is alive: a wedged pipeline stops the pings and systemd
/// restarts the service. Does nothing when the watchdog is off.
pub async fn watchdog(catalog: Catalog, liveness: std::sync::Arc<Liveness>, cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let catalog_ok = matches!(
            tokio::time::timeout(period, catalog.run(|c| c.forward_queue().next_due())).await,
            Ok(Ok(_))
        );
        match (catalog_ok, liveness.check()) {
            (true, Ok(())) => {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            (false, _) => tracing::error!("watchdog withheld: the catalog did not answer"),
            (_, Err(why)) => tracing::error!("watchdog withheld: {why}"),
        }
    }
}
