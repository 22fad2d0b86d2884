//! Fair intake: ingress events become durable work items ([`Recorder`]), and a bounded pool of
//! lanes ([`Lane`]) takes them one tenant at a time, round-robin across the tenants with work
//! due. A tenant never holds more than one lane, so whatever it sends (a 3 GiB zip, a
//! million-row CSV, 5,000 files at once) delays that tenant only while other lanes serve the
//! rest. Which items are due, and their retries, live in the catalog; the scheduler only
//! remembers whose turn it is and which tenants are in a lane.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::Intake;
use crate::catalog::{Catalog, CatalogError, IntakeItem, IntakeOutcome, Leases, NewIntake, Via, now_ms};
use crate::ingress::{Arrived, IngressEvent};
use crate::worker::{Worker, WorkerError, WorkerState};

/// Light items (recordings, unknown files) one lane takes in one unit: one commit records them.
const LIGHT_PER_UNIT: usize = 256;

/// Events recorded in one transaction at most.
const EVENTS_PER_COMMIT: usize = 1024;

/// Whose turn it is, and which tenants are in a lane.
pub struct Scheduler {
    state: Mutex<Turns>,
    /// Woken when work items were recorded or a tenant left its lane.
    pub wake: Arc<Notify>,
}

#[derive(Default)]
struct Turns {
    in_lane: HashSet<String>,
    last: Option<String>,
}

/// A tenant held by a lane; released when dropped, whatever happened.
pub struct TenantSlot<'a> {
    scheduler: &'a Scheduler,
    tenant: String,
    /// The cluster's lease on the tenant's intake, when nodes share the catalog.
    lease: Option<Leases>,
}

/// The lease that makes a tenant's intake one lane's across the nodes sharing a catalog, as
/// `in_lane` does across this node's lanes.
fn intake_lease(tenant: &str) -> String {
    format!("intake {tenant}")
}

impl Drop for TenantSlot<'_> {
    fn drop(&mut self) {
        if let Some(leases) = &self.lease
            && let Err(e) = leases.release(&intake_lease(&self.tenant))
        {
            // It runs out after a lease instead.
            tracing::warn!(tenant = %self.tenant, error = %e, "cannot give back the intake lease");
        }
        self.scheduler.turns().in_lane.remove(&self.tenant);
        // A lane may be waiting for this tenant's next unit.
        self.scheduler.wake.notify_one();
    }
}

/// What a lane found when it looked for work.
pub enum Claim<'a> {
    Unit(TenantSlot<'a>, Vec<IntakeItem>),
    /// Work is due, but only for tenants already in a lane: wait until one is released.
    AllInLanes,
    /// Nothing is due.
    Nothing,
}

impl Scheduler {
    pub fn new(wake: Arc<Notify>) -> Self {
        Scheduler {
            state: Mutex::default(),
            wake,
        }
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next tenant after the last one served, among those with work due and not in a
    /// lane; `Err(true)` if work is due only for tenants in a lane, `Err(false)` if none is.
    fn next_tenant(&self, catalog: &Catalog, now: i64) -> Result<Result<TenantSlot<'_>, bool>, CatalogError> {
        let last = self.turns().last.clone();
        let mut cursor = last.clone().unwrap_or_default();
        let (mut wrapped, mut held) = (false, false);
        loop {
            let Some(tenant) = catalog.intake_queue().next_intake_tenant(&cursor, now)? else {
                if wrapped || last.is_none() {
                    return Ok(Err(held));
                }
                (wrapped, cursor) = (true, String::new());
                continue;
            };
            if wrapped && last.as_ref().is_some_and(|l| tenant > *l) {
                return Ok(Err(held));
            }
            if self.turns().in_lane.insert(tenant.clone()) {
                let leases = catalog.is_shared().then(|| catalog.leases());
                // Another node's lane has this tenant: as if one of ours had.
                let taken = match &leases {
                    Some(l) => l.try_take(&intake_lease(&tenant), now).inspect_err(|_| {
                        self.turns().in_lane.remove(&tenant);
                    })?,
                    None => true,
                };
                if taken {
                    self.turns().last = Some(tenant.clone());
                    return Ok(Ok(TenantSlot {
                        scheduler: self,
                        tenant,
                        lease: leases,
                    }));
                }
                self.turns().in_lane.remove(&tenant);
            }
            held = true;
            cursor = tenant;
        }
    }

    /// Takes the next unit of work: a tenant in its turn, and its due items.
    pub fn claim(&self, catalog: &Catalog, now: i64) -> Result<Claim<'_>, CatalogError> {
        let slot = match self.next_tenant(catalog, now)? {
            Ok(slot) => slot,
            Err(true) => return Ok(Claim::AllInLanes),
            Err(false) => return Ok(Claim::Nothing),
        };
        let items = catalog.intake_queue().claim_intake(&slot.tenant, now, LIGHT_PER_UNIT)?;
        Ok(if items.is_empty() {
            Claim::Nothing
        } else {
            Claim::Unit(slot, items)
        })
    }
}

/// One intake lane: takes a unit of work, processes it off the runtime, records how each item
/// ended.
pub struct Lane {
    pub index: usize,
    pub intake: Intake,
    pub scheduler: Arc<Scheduler>,
    /// What the last look for work found, for how to wait.
    pub found: Found,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Found {
    #[default]
    Nothing,
    AllInLanes,
}

impl Worker for Lane {
    fn name(&self) -> String {
        format!("intake lane {}", self.index)
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let (intake, scheduler) = (self.intake.clone(), self.scheduler.clone());
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Found>, CatalogError> {
            let (_slot, items) = match scheduler.claim(&intake.catalog, now_ms())? {
                Claim::Unit(slot, items) => (slot, items),
                Claim::AllInLanes => return Ok(Some(Found::AllInLanes)),
                Claim::Nothing => return Ok(Some(Found::Nothing)),
            };
            // There was work: another lane may find more (another tenant's).
            scheduler.wake.notify_one();
            let outcomes = process_catching_panics(&intake, items);
            intake.catalog.intake_queue().finish_intake(&outcomes)?;
            Ok(None)
        })
        .await??;
        Ok(match found {
            None => WorkerState::Busy,
            Some(found) => {
                self.found = found;
                WorkerState::Idle
            }
        })
    }

    async fn wait_for_work(&mut self) {
        // Work held by other lanes: their release wakes us. Nothing due: until the next item
        // is (a retry, a settling file), or new items wake us.
        let wait = match self.found {
            Found::AllInLanes => Duration::from_secs(5),
            Found::Nothing => match self.intake.catalog.run(|c| c.intake_queue().next_intake_due()).await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(10, 5000) as u64),
                _ => Duration::from_secs(5),
            },
        };
        tokio::select! {
            _ = self.scheduler.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Processes a unit; a panic counts as one failed attempt of the item that caused it (found by
/// processing the unit's items again one at a time, which replays safely), so a bug that one
/// file triggers costs that file only and ends `failed` after `max_attempts`.
fn process_catching_panics(intake: &Intake, items: Vec<IntakeItem>) -> Vec<(IntakeItem, IntakeOutcome)> {
    let run = |items: Vec<IntakeItem>| std::panic::catch_unwind(AssertUnwindSafe(|| intake.process(items)));
    let panicked = |item: IntakeItem, payload: Box<dyn std::any::Any + Send>| {
        // A bug may hang on timing: tried again, up to `max_attempts`.
        let retry_helps = true;
        let outcome = intake.failed_attempt(&item, &crate::fault::panic_message(&*payload), retry_helps, now_ms());
        (item, outcome)
    };
    match run(items.clone()) {
        Ok(outcomes) => outcomes,
        Err(payload) if items.len() == 1 => items.into_iter().zip([payload]).map(|(i, p)| panicked(i, p)).collect(),
        Err(_) => items
            .into_iter()
            .flat_map(|item| match run(vec![item.clone()]) {
                Ok(outcomes) => outcomes,
                Err(payload) => vec![panicked(item, payload)],
            })
            .collect(),
    }
}

/// Turns ingress events into work items. Events it could not record yet (the catalog is busy,
/// the disk full) stay in memory and are tried again; the channel in front of it holds the
/// ingresses back meanwhile.
pub struct Recorder {
    pub rx: mpsc::Receiver<IngressEvent>,
    pub intake: Intake,
    pub wake: Arc<Notify>,
    pending: Vec<NewIntake>,
    closed: bool,
}

impl Recorder {
    pub fn new(rx: mpsc::Receiver<IngressEvent>, intake: Intake, wake: Arc<Notify>) -> Self {
        Recorder {
            rx,
            intake,
            wake,
            pending: Vec::new(),
            closed: false,
        }
    }

    /// The work items an event asks for.
    fn items_for(&self, event: IngressEvent, now: i64) -> Vec<NewIntake> {
        let scan = |tenant: &str, rel_path: String| NewIntake::scan(tenant, rel_path, now);
        match event {
            IngressEvent::Arrived(Arrived {
                tenant,
                rel,
                via,
                digest,
            }) => {
                // Announcements as the ingresses made them: one per arrival.
                metrics::counter!("dropsync_arrivals_total", "tenant" => tenant.to_string(), "via" => via.as_str())
                    .increment(1);
                let mut item = self.intake.file_item(&tenant, &rel, via, now);
                item.known(digest.as_ref());
                vec![item]
            }
            IngressEvent::Rescan { tenant: Some(t) } => vec![scan(t.as_str(), String::new())],
            IngressEvent::Rescan { tenant: None } => {
                let config = self.intake.config.get();
                config
                    .tenants
                    .iter()
                    .map(|t| scan(t.id.as_str(), String::new()))
                    .collect()
            }
            IngressEvent::FolderCreated { tenant, rel } => vec![scan(tenant.as_str(), rel.as_str().to_owned())],
            // Checked like an arrival: a file no longer there is marked gone.
            IngressEvent::Gone { tenant, rel } => vec![self.intake.file_item(&tenant, &rel, Via::Local, now)],
        }
    }

    fn take(&mut self, event: IngressEvent) {
        let items = self.items_for(event, now_ms());
        self.pending.extend(items);
    }
}

impl Worker for Recorder {
    fn name(&self) -> String {
        "intake recorder".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        while self.pending.len() < EVENTS_PER_COMMIT {
            match self.rx.try_recv() {
                Ok(event) => self.take(event),
                Err(_) => break,
            }
        }
        if self.pending.is_empty() {
            return Ok(if self.closed {
                WorkerState::Done
            } else {
                WorkerState::Idle
            });
        }
        // The batch travels to the blocking pool and back; kept for the retry if it failed.
        let items = std::mem::take(&mut self.pending);
        let (items, recorded) = self
            .intake
            .catalog
            .run(move |c| {
                let recorded = c.intake_queue().enqueue_intake(&items, now_ms());
                Ok((items, recorded))
            })
            .await?;
        if let Err(e) = recorded {
            self.pending = items;
            return Err(e.into());
        }
        self.wake.notify_one();
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        match self.rx.recv().await {
            Some(event) => self.take(event),
            None => self.closed = true,
        }
    }

    fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{IntakeOutcome, Via};

    fn item(tenant: &str, rel: &str, heavy: bool) -> NewIntake {
        NewIntake::file(tenant, rel, Via::Local, heavy, 0)
    }

    #[test]
    fn tenants_take_turns_and_hold_one_lane_each() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let mut items = vec![item("noisy", "big.zip", true), item("noisy", "huge.csv", true)];
        items.extend((0..600).map(|i| item("noisy", &format!("n{i}.wav"), false)));
        items.push(item("quiet", "q.wav", false));
        items.push(item("third", "t.csv", true));
        cat.intake_queue().enqueue_intake(&items, 0).unwrap();
        let s = Scheduler::new(Arc::default());
        fn unit<'s>(s: &'s Scheduler, cat: &Catalog) -> (TenantSlot<'s>, Vec<String>) {
            match s.claim(cat, 0).unwrap() {
                Claim::Unit(slot, items) => (slot, items.iter().map(|i| i.rel_path.clone()).collect()),
                _ => panic!("no unit"),
            }
        }
        // Three lanes busy at once: one tenant each, whatever the noisy one has queued.
        let (a, na) = unit(&s, &cat);
        let (b, nb) = unit(&s, &cat);
        let (c, nc) = unit(&s, &cat);
        assert_eq!((a.tenant.as_str(), na.len()), ("noisy", 256));
        assert_eq!((b.tenant.as_str(), &nb[..]), ("quiet", &["q.wav".to_string()][..]));
        assert_eq!((c.tenant.as_str(), &nc[..]), ("third", &["t.csv".to_string()][..]));
        assert!(matches!(s.claim(&cat, 0).unwrap(), Claim::AllInLanes));
        // Done: quiet and third have nothing left; noisy comes round again, heavy items alone.
        for (slot, names) in [(b, nb), (c, nc)] {
            let done: Vec<_> = cat
                .intake_queue()
                .claim_intake(&slot.tenant, 0, 300)
                .unwrap()
                .into_iter()
                .filter(|i| names.contains(&i.rel_path))
                .map(|i| (i, IntakeOutcome::Done))
                .collect();
            cat.intake_queue().finish_intake(&done).unwrap();
        }
        drop(a);
        let (d, nd) = unit(&s, &cat);
        assert_eq!((d.tenant.as_str(), nd.len()), ("noisy", 256));
    }
}
