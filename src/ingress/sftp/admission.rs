//! Who may connect, before any SSH is spoken: bans after failed logins, penalties for sources
//! that never log in, connections per address, and the startup slots of connections not logged
//! in yet. The accept loop asks [`Admission::admit`]; what it gives back holds the
//! connection's place until it ends.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::penalties::Penalties;
use crate::config::SftpConfig;
use crate::ingress::bans::{Bans, source_of};

/// The limits on who may connect, and what each source holds now.
pub struct Admission {
    max_sessions_per_ip: u32,
    max_startups: u32,
    max_startups_per_source: u32,
    /// Connections per address (logged in or not).
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Connections not logged in yet, in all and per source.
    startups: Arc<Semaphore>,
    startups_per_source: Mutex<HashMap<IpAddr, VecDeque<HalfOpen>>>,
    pub bans: Arc<Bans>,
    pub penalties: Penalties,
    next_startup: AtomicU64,
}

/// A connection not logged in yet, as its source's queue holds it: the oldest is dropped first
/// when a newcomer needs its slot.
struct HalfOpen {
    id: u64,
    kick: CancellationToken,
}

/// A connection let in: its startup slot (until it logs in) and its place among its address's
/// connections (until it ends).
pub struct Admitted {
    pub startup: StartupSlot,
    pub address: AddressSlot,
}

/// One connection counted against `max_sessions_per_ip`, until it is dropped.
pub struct AddressSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(limits: &SftpConfig, bans: Arc<Bans>) -> Admission {
        Admission {
            max_sessions_per_ip: limits.max_sessions_per_ip,
            max_startups: limits.max_startups,
            max_startups_per_source: limits.max_startups_per_source,
            per_ip: Mutex::new(HashMap::new()),
            startups: Arc::new(Semaphore::new(limits.max_startups as usize)),
            startups_per_source: Mutex::new(HashMap::new()),
            bans,
            penalties: Penalties::new(limits.penalty_exempt.clone()),
            next_startup: AtomicU64::new(1),
        }
    }

    /// Lets a connection from `peer` in, or says why not (logged, and counted by reason):
    /// banned, penalised, too many half-open connections from its source, or too many
    /// connections from its address. `kick` ends it if its startup slot is given to another.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, kick: &CancellationToken) -> Option<Admitted> {
        let ip = peer.ip();
        if self.bans.is_banned(ip) {
            tracing::debug!(peer = %peer, "connection refused: banned after repeated failed logins");
            refusal("banned");
            return None;
        }
        if self.penalties.refuses(ip) {
            tracing::debug!(peer = %peer, "connection refused: penalised for connections that never logged in");
            refusal("penalty");
            return None;
        }
        let startup = StartupSlot::take(self, ip, kick)?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_sessions_per_ip {
            tracing::warn!(peer = %peer, max = self.max_sessions_per_ip, "connection refused: too many sessions from this address");
            refusal("sessions_per_ip");
            return None;
        }
        *n += 1;
        let address = AddressSlot {
            admission: self.clone(),
            ip,
        };
        Some(Admitted { startup, address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut per_ip = self.admission.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Counts a connection or session turned away, by why.
pub(super) fn refusal(reason: &'static str) {
    metrics::counter!("dropsync_sftp_refused_total", "reason" => reason).increment(1);
}

/// A connection not logged in yet: counted against `max_startups` in all and per source until
/// it logs in or ends.
///
/// When every slot is taken, a newcomer is not turned away (a tenant must never be locked out by
/// others' half-open connections): the oldest pending connection of the source holding the most
/// is dropped for it, as long as that source holds more than the newcomer's. An attacker's own
/// connections are what make room.
pub struct StartupSlot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
}

impl StartupSlot {
    fn take(admission: &Arc<Admission>, ip: IpAddr, kick: &CancellationToken) -> Option<StartupSlot> {
        let source = source_of(ip);
        let mut per_source = admission.startups_per_source.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_source.get(&source).map_or(0, VecDeque::len);
        if mine >= admission.max_startups_per_source as usize {
            tracing::warn!(peer = %ip, max = admission.max_startups_per_source,
                "connection refused: too many connections not logged in yet from this source (sftp.max_startups_per_source)");
            refusal("startups_per_source");
            return None;
        }
        let permit = match admission.startups.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let fattest = per_source
                    .iter_mut()
                    .max_by_key(|(_, q)| q.len())
                    .filter(|(_, q)| q.len() > mine + 1);
                let Some((victim_source, queue)) = fattest else {
                    tracing::warn!(peer = %ip, max = admission.max_startups,
                        "connection refused: too many connections not logged in yet (sftp.max_startups)");
                    return None;
                };
                if let Some(victim) = queue.pop_front() {
                    tracing::info!(peer = %ip, dropped_from = %victim_source, "all startup slots taken: dropping a half-open connection of the busiest source");
                    victim.kick.cancel();
                }
                None
            }
        };
        let id = admission.next_startup.fetch_add(1, Ordering::Relaxed);
        per_source
            .entry(source)
            .or_default()
            .push_back(HalfOpen { id, kick: kick.clone() });
        Some(StartupSlot {
            permit,
            admission: admission.clone(),
            source,
            id,
        })
    }

    /// The slot with its permit: at once, or once the connection dropped for it has let go.
    pub async fn ready(mut self) -> Option<StartupSlot> {
        if self.permit.is_none() {
            let wait = self.admission.startups.clone().acquire_owned();
            self.permit = Some(tokio::time::timeout(Duration::from_secs(5), wait).await.ok()?.ok()?);
        }
        Some(self)
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let mut per_source = self
            .admission
            .startups_per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = per_source.get_mut(&self.source) {
            queue.retain(|h| h.id != self.id);
            if queue.is_empty() {
                per_source.remove(&self.source);
            }
        }
    }
}
