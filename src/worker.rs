//! The one shape of background work (after garage's `util/background/worker.rs`).
//!
//! A [`Worker`] does one unit of work at a time and says whether there may be more
//! ([`WorkerState::Busy`]) or not ([`WorkerState::Idle`]); when idle it waits for work.
//! [`Workers::spawn`] runs it: the runner owns what every loop would otherwise write again —
//! stopping on the one cancellation token, backing off after errors (no loop swallows one),
//! counting them in metrics, and showing the watchdog that the loop is alive ([`Liveness`]).
//!
//! Units are not cut short by a stop: each is bounded (a batch of arrivals, a chunk of rows, a
//! conversation) and every one is replayable from the catalog, so the drain deadline in
//! `app.rs` bounds a stop however long a unit would take.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// What a unit of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// There may be more work right away.
    Busy,
    /// Nothing to do: wait for work.
    Idle,
    /// The worker has finished for good.
    Done,
}

/// An error that ends one unit of work; the runner logs it and backs off.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub trait Worker: Send + 'static {
    /// Whether a unit may be dropped midway when the worker is stopped (its effects are
    /// replayable and it may take long, like an FTP poll); otherwise a unit runs to its end.
    const ABORT_ON_STOP: bool = false;

    /// A stable name for logs, metrics and the watchdog ("intake lane 1", "forwarder 0").
    fn name(&self) -> String;

    /// Does one unit of work.
    fn work(&mut self) -> impl Future<Output = Result<WorkerState, WorkerError>> + Send;

    /// Waits until there may be work (a wake-up, a due time). Cancelled by the runner on stop.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// Called once when the daemon stops (not after `Done`): a last pass, if the worker needs one.
    fn stopping(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Whether the watchdog waits on this worker's progress. Not for workers whose units wait
    /// on the outside world (a slow FTP server must not get the daemon restarted).
    fn watched(&self) -> bool {
        true
    }

    /// How long to wait after the first error and at most after many in a row.
    fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Starts workers under the daemon's one cancellation token and task tracker.
#[derive(Clone)]
pub struct Workers {
    tracker: TaskTracker,
    cancel: CancellationToken,
    liveness: Arc<Liveness>,
}

impl Workers {
    pub fn new(tracker: TaskTracker, cancel: CancellationToken, liveness: Arc<Liveness>) -> Self {
        Workers {
            tracker,
            cancel,
            liveness,
        }
    }

    /// Runs `worker` until the daemon stops or `stop` (a child of the daemon's token) is
    /// cancelled.
    pub fn spawn_until<W: Worker>(&self, worker: W, stop: CancellationToken) {
        let span = tracing::info_span!("worker", name = %worker.name());
        self.spawn_until_in(worker, stop, span);
    }

    /// Like [`Workers::spawn_until`], in a span of the caller's.
    pub fn spawn_until_in<W: Worker>(&self, worker: W, stop: CancellationToken, span: tracing::Span) {
        self.tracker
            .spawn(run(worker, stop, self.liveness.clone()).instrument(span));
    }

    pub fn spawn<W: Worker>(&self, worker: W) {
        self.spawn_until(worker, self.cancel.clone());
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

async fn run<W: Worker>(mut worker: W, cancel: CancellationToken, liveness: Arc<Liveness>) {
    let name = worker.name();
    let liveness = worker.watched().then_some(liveness);
    let busy = |l: &Option<Arc<Liveness>>| l.iter().for_each(|l| l.busy(&name));
    let idle = |l: &Option<Arc<Liveness>>| l.iter().for_each(|l| l.idle(&name));
    let mut errors_in_row: i64 = 0;
    loop {
        if cancel.is_cancelled() {
            worker.stopping().await;
            break;
        }
        busy(&liveness);
        let outcome = if W::ABORT_ON_STOP {
            tokio::select! {
                _ = cancel.cancelled() => continue,
                r = worker.work() => r,
            }
        } else {
            worker.work().await
        };
        match outcome {
            Ok(WorkerState::Busy) => {
                errors_in_row = 0;
                // Let the other tasks of this runtime thread have their turn between units.
                tokio::task::yield_now().await;
            }
            Ok(WorkerState::Idle) => {
                errors_in_row = 0;
                idle(&liveness);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = worker.wait_for_work() => {}
                }
            }
            Ok(WorkerState::Done) => break,
            Err(e) => {
                errors_in_row += 1;
                let (min, max) = worker.backoff();
                let delay = crate::backoff::exponential(errors_in_row, min, max);
                metrics::counter!("dropsync_worker_errors_total", "worker" => worker_kind(&name)).increment(1);
                tracing::error!(error = %e, errors_in_row, retry_in = ?delay, "background work failed; retrying");
                idle(&liveness);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if let Some(l) = &liveness {
        l.forget(&name);
    }
}

/// The metric label: the name without its number, so labels stay few.
fn worker_kind(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ')
        .to_owned()
}

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

/// When each pipeline loop last showed signs of life: written by the runner, read by the
/// watchdog and `/healthz` (`ops`), which sit around the pipeline rather than under it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails twice, then does three units, then is done.
    struct Flaky {
        calls: Arc<AtomicUsize>,
    }

    impl Worker for Flaky {
        fn name(&self) -> String {
            "flaky 1".into()
        }
        async fn work(&mut self) -> Result<WorkerState, WorkerError> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("disk on fire".into()),
                2 | 3 => Ok(WorkerState::Busy),
                4 => Ok(WorkerState::Idle),
                _ => Ok(WorkerState::Done),
            }
        }
        async fn wait_for_work(&mut self) {}
        fn backoff(&self) -> (Duration, Duration) {
            (Duration::from_millis(1), Duration::from_millis(2))
        }
    }

    #[tokio::test]
    async fn errors_back_off_and_the_worker_goes_on() {
        let calls = Arc::new(AtomicUsize::new(0));
        let liveness = Arc::new(Liveness::default());
        let tracker = TaskTracker::new();
        let workers = Workers::new(tracker.clone(), CancellationToken::new(), liveness.clone());
        workers.spawn(Flaky { calls: calls.clone() });
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert!(liveness.check().is_ok());
    }

    #[tokio::test]
    async fn a_stop_ends_an_idle_worker() {
        struct Idle;
        impl Worker for Idle {
            fn name(&self) -> String {
                "idle".into()
            }
            async fn work(&mut self) -> Result<WorkerState, WorkerError> {
                Ok(WorkerState::Idle)
            }
            async fn wait_for_work(&mut self) {
                std::future::pending::<()>().await
            }
        }
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        Workers::new(tracker.clone(), cancel.clone(), Arc::default()).spawn(Idle);
        tracker.close();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .unwrap();
    }

    #[test]
    fn metric_labels_drop_the_number() {
        assert_eq!(worker_kind("intake lane 12"), "intake lane");
        assert_eq!(worker_kind("reports"), "reports");
    }
}
