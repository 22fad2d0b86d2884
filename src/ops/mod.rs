//! Operations around the pipeline: systemd readiness and watchdog (sd-notify), and the liveness
//! record the watchdog reads. Without systemd (no NOTIFY_SOCKET), notifications are no-ops.

pub mod metrics;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;

/// How long a loop may sit between ticks while idle (the loops wake at least every 5 s).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// How long one unit of work (a conversation, a chunk of rows, an arrival batch) may take before
/// its loop counts as wedged.
const MAX_BUSY: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy)]
struct Beat {
    at: Instant,
    busy: bool,
}

/// When each pipeline loop last showed signs of life.
#[derive(Default)]
pub struct Liveness {
    beats: Mutex<HashMap<String, Beat>>,
}

impl Liveness {
    fn set(&self, who: &str, busy: bool) {
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.insert(
            who.to_owned(),
            Beat {
                at: Instant::now(),
                busy,
            },
        );
    }
    /// The loop is at its top: waiting for work, or between units.
    pub fn idle(&self, who: &str) {
        self.set(who, false);
    }
    /// The loop started a unit of work.
    pub fn busy(&self, who: &str) {
        self.set(who, true);
    }
    /// The loop has ended (a poller stopped by a reload): it is no longer watched.
    pub fn forget(&self, who: &str) {
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).remove(who);
    }
    /// Every loop ticked recently enough; otherwise the name of one that did not.
    pub fn check(&self) -> Result<(), String> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        for (who, b) in beats.iter() {
            let limit = if b.busy { MAX_BUSY } else { MAX_IDLE };
            if b.at.elapsed() > limit {
                return Err(format!("{who} has shown no progress for {:?}", b.at.elapsed()));
            }
        }
        Ok(())
    }
}

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
            tokio::time::timeout(period, catalog.run(|c| c.next_due())).await,
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
