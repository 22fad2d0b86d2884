//! The catalog: every file, metadata row, conversation and delivery, in SQLite. The only module
//! that touches the database.
//!
//! It is also the durable work queue: a conversation in state `ready` with `next_attempt_at` due
//! is work for the forwarder; channels elsewhere are only wake-up hints.
//!
//! # Crash ordering (record before effect)
//! Every transition is committed before the side effect that depends on it is trusted, and every
//! step is safe to replay:
//! - **Arrival**: the file is on disk (closed or renamed into place) before it is recorded. A crash
//!   before the record is healed by the start-up scan, which records it then.
//! - **Metadata parsing**: rows are committed in chunks together with `rows_done`; a crash
//!   mid-file resumes after the last committed row. Readiness of a conversation is decided in
//!   the same transaction as the arrival or row that completes it.
//! - **Forwarding**: `ready -> forwarding` is committed, then objects are written (recordings,
//!   then `metadata.json` last) under keys that depend only on the conversation, then
//!   `forwarding -> forwarded` is committed. A crash in between leaves `forwarding`, which start-up
//!   turns back into `ready`; the replay overwrites the same keys, so nothing is sent twice under
//!   two keys, and `metadata.json` never exists without its recordings.
//! - **Archiving**: files leave the drop folder only after `forwarded` is committed; the move is
//!   replayed at start-up if the crash fell between the move and its record.
//! - **Reports**: the "stale" flag is set by triggers in the same transaction as the change.

mod allocation;
mod ftp;
mod intake;
mod intake_queue;
mod prune;
mod queue;
mod revisions;
mod rows;
mod schema;
mod turns;
mod views;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

pub use allocation::{AllocationNow, Allocations, MinutesStatus, allocations_for};
pub use ftp::{AppliedListing, FtpSourceStatus, PollRecord, RemoteFile, RemoteFileState, version_tag};
pub use intake::{NewFile, PendingParse, Registered, RowInput};
pub use intake_queue::{IntakeItem, IntakeKind, IntakeOutcome, NewIntake};
pub use prune::Pruned;
pub use queue::{Departure, Forwarded, RecordedFile, ToArchive, ToPurge, Work, WorkRecording};
pub use views::{ConversationView, OrphanLine, ReportLine, StaleReport, StatusView, TenantStatus};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog database {path} was written by a newer dropsync (schema {found}, this one knows {known})")]
    TooNew { path: String, found: i64, known: i64 },
    #[error("catalog: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// How a file reached its drop folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Sftp,
    Ftp,
    Local,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Sftp => "sftp",
            Via::Ftp => "ftp",
            Via::Local => "local",
        }
    }
    pub fn parse(s: &str) -> Via {
        match s {
            "sftp" => Via::Sftp,
            "ftp" => Via::Ftp,
            _ => Via::Local,
        }
    }
}

/// Conversation states (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConvState {
    Waiting,
    Ready,
    Forwarding,
    Forwarded,
    Rejected,
    Expired,
    Failed,
    /// Over its tenant's minute allocation (SPEC §9): waits for a raise or a new month.
    Held,
}

impl ConvState {
    pub const ALL: [ConvState; 8] = [
        ConvState::Waiting,
        ConvState::Ready,
        ConvState::Forwarding,
        ConvState::Forwarded,
        ConvState::Rejected,
        ConvState::Expired,
        ConvState::Failed,
        ConvState::Held,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ConvState::Waiting => "waiting",
            ConvState::Ready => "ready",
            ConvState::Forwarding => "forwarding",
            ConvState::Forwarded => "forwarded",
            ConvState::Rejected => "rejected",
            ConvState::Expired => "expired",
            ConvState::Failed => "failed",
            ConvState::Held => "held",
        }
    }
    pub fn parse(s: &str) -> Option<ConvState> {
        ConvState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A handle on the catalog. Clones share one writer connection and a pool of read-only ones;
/// callers on the async runtime call it from `spawn_blocking` (see [`Catalog::run`]).
///
/// One writer is what SQLite wants anyway; its lock is held for one short transaction at a
/// time. Readers (status, metrics, reports, the CLI's views) use their own connections, which
/// WAL lets run beside the writer, so a report streamed to a slow disk never holds up intake.
#[derive(Clone)]
pub struct Catalog {
    conn: Arc<parking_lot::Mutex<Connection>>,
    readers: Arc<Readers>,
    /// Taken only with `conn` held.
    held_derived: Arc<allocation::HeldDerived>,
}

/// The writer connection while it is held. Its hold time goes to the summary
/// `dropsync_catalog_writer_hold_seconds` (p99 and max on `/metrics`); a hold past
/// [`LONG_HOLD`] is logged with the code that held it.
pub(crate) struct Writer<'a> {
    conn: parking_lot::MutexGuard<'a, Connection>,
    since: Instant,
    caller: &'static std::panic::Location<'static>,
}

/// A writer hold long enough that every other writer (every tenant's intake and forwarding)
/// noticeably waited on it.
const LONG_HOLD: Duration = Duration::from_millis(100);

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        metrics::histogram!("dropsync_catalog_writer_hold_seconds").record(held.as_secs_f64());
        if held >= LONG_HOLD {
            tracing::warn!(held_ms = held.as_millis() as u64, at = %self.caller, "catalog writer held long");
        }
    }
}

/// Read-only connections, opened on demand and kept for reuse.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept open at most.
const MAX_IDLE_READERS: usize = 8;

/// A read-only connection, back to the pool when dropped.
pub(crate) struct ReadConn<'a> {
    conn: Option<Connection>,
    readers: &'a Readers,
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.readers.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

impl Catalog {
    /// Opens (creating if needed) the database and applies pending migrations. Only the daemon
    /// (`dropsync run`) does this.
    pub fn open(path: &Path) -> Result<Catalog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CatalogError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)?;
        configure(&mut conn)?;
        migrate(&conn, path)?;
        allocation::count_held_room(&conn)?;
        Ok(Catalog::with_writer(conn, path))
    }

    /// Opens an existing database for writing without migrating it (CLI commands that change
    /// state while a daemon may run): a schema other than this build's is refused.
    pub fn open_existing(path: &Path) -> Result<Catalog> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&mut conn)?;
        check_schema(&conn, path, true)?;
        Ok(Catalog::with_writer(conn, path))
    }

    /// Opens an existing database read-only (CLI views while the daemon runs).
    pub fn open_read_only(path: &Path) -> Result<Catalog> {
        let conn = open_reader(path)?;
        check_schema(&conn, path, false)?;
        Ok(Catalog::with_writer(conn, path))
    }

    fn with_writer(conn: Connection, path: &Path) -> Catalog {
        Catalog {
            conn: Arc::new(parking_lot::Mutex::new(conn)),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            held_derived: Arc::default(),
        }
    }

    /// How long a writer waits for another process's write lock (the CLI's `retry`, a
    /// backup) before the transaction fails and its work is retried later.
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<()> {
        Ok(self.lock().busy_timeout(timeout)?)
    }

    /// The writer, the one place it is taken: how long each holder waited for it and kept it
    /// is recorded, so that no tenant's work holding everyone's writer for long goes unseen.
    ///
    /// The lock is parking_lot's, which hands over to a waiter at least every millisecond or
    /// so: with std's, a thread committing slice after slice (a large CSV's rows) took it
    /// straight back each time and left the other tenants' intake and forwarders waiting for
    /// whole seconds. A panic while holding it cannot leave a half-done transaction behind
    /// (rusqlite rolls back on drop), and parking_lot has no poisoning to step over.
    #[track_caller]
    fn lock(&self) -> Writer<'_> {
        let caller = std::panic::Location::caller();
        let asked = Instant::now();
        let conn = self.conn.lock();
        let since = Instant::now();
        metrics::histogram!("dropsync_catalog_writer_wait_seconds").record((since - asked).as_secs_f64());
        Writer { conn, since, caller }
    }

    /// A read-only connection of the pool.
    pub(crate) fn read(&self) -> Result<ReadConn<'_>> {
        let pooled = self.readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.readers.path)?,
        };
        Ok(ReadConn {
            conn: Some(conn),
            readers: &self.readers,
        })
    }

    /// Runs `f` in a transaction whose commit is not fsynced: for records that the start-up
    /// scan rebuilds if a power cut loses them (intake work items). A later full commit makes
    /// it durable too, as the write-ahead log is written in order.
    #[track_caller]
    fn light<R>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = (|| {
            let tx = conn.transaction()?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })();
        conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    /// Applies `f` to each of `items` in transactions that each hold the writer for about
    /// `slice`, letting other writers in between; their commits are not synced (see
    /// [`Catalog::light`]: the caller's records must be ones a power cut may lose). Gives the
    /// results of the items committed, in order, and the error that stopped the rest, if one
    /// did; a failed slice is rolled back whole.
    #[track_caller]
    fn sliced<T, R>(
        &self,
        items: &[T],
        slice: Duration,
        mut f: impl FnMut(&Transaction<'_>, &T) -> Result<R>,
    ) -> (Vec<R>, Result<()>) {
        let mut done = Vec::with_capacity(items.len());
        while done.len() < items.len() {
            let committed = self.light(|tx| {
                let started = Instant::now();
                let mut results = Vec::new();
                for item in &items[done.len()..] {
                    results.push(f(tx, item)?);
                    if started.elapsed() >= slice {
                        break;
                    }
                }
                Ok(results)
            });
            match committed {
                Ok(results) => done.extend(results),
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    /// Runs `f` on a blocking thread, for callers on the async runtime.
    pub async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> Result<R> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| CatalogError::Corrupt(format!("catalog task failed: {e}")))?
    }
}

fn configure(conn: &mut Connection) -> Result<()> {
    // WAL lets the CLI read while the daemon writes. synchronous=FULL: a commit is on disk when
    // it returns, which is what "recorded before the side effect" relies on across power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Writers take the write lock when they begin, not at their first write: a transaction
    // that read first could otherwise fail with "database is locked" midway instead of waiting.
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    Ok(())
}

/// Refuses a schema this build does not know; `exact` also refuses an older one (a CLI
/// command must not run on a database the daemon has not migrated yet).
fn check_schema(conn: &Connection, path: &Path, exact: bool) -> Result<i64> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema::MIGRATIONS.len() as i64;
    if version > known {
        return Err(CatalogError::TooNew {
            path: path.display().to_string(),
            found: version,
            known,
        });
    }
    if exact && version < known {
        return Err(CatalogError::Corrupt(format!(
            "{} has schema {version}, this dropsync needs {known}: start `dropsync run` once to migrate it",
            path.display()
        )));
    }
    Ok(version)
}

fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version = check_schema(conn, path, false)?;
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Whether the database has table `name`: an old database opened read-only by the CLI may
/// predate it.
fn has_table(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .is_some())
}

/// Milliseconds since the Unix epoch, the catalog's clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;
