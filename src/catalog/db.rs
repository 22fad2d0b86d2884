//! The database under every catalog handle: SQLite (a writer connection behind a lock, the one
//! place that lock is taken and timed, and a pool of read-only connections) or PostgreSQL
//! (`pg.rs`).
//!
//! Gives out [`Db::write`] (a durable transaction), [`Db::light`] (one without a sync of its
//! own), their `_for` forms (a transaction of one tenant's rows, which on PostgreSQL runs
//! beside other tenants'), [`Db::write_statement`] (one atomic statement) and [`Db::read`] (a
//! pooled reader). Handles hold a clone of a [`Db`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::Result;
use super::pg::{Lock, Pg};
use super::sql::Sql;

/// The catalog's database: SQLite in `state_dir` (one node), or PostgreSQL shared by several
/// (`[catalog] url`). Clones share its connections.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(Lite),
    Postgres(Pg),
}

impl Db {
    /// Runs `f` in a transaction whose commit is durable when this returns: what a side effect
    /// that follows relies on. `f` may run more than once (PostgreSQL runs a transaction
    /// again when it lost a conflict with another), so it only computes what it returns.
    #[track_caller]
    pub(crate) fn write<R>(&self, f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        self.write_for(None, f)
    }

    /// [`Db::write`], for a transaction that reads and changes only rows of `tenant` (when
    /// `Some`). On PostgreSQL such transactions of different tenants run at once (see
    /// `pg.rs`); one of a tenant and one of everyone's still run one at a time, as every
    /// transaction does on SQLite.
    #[track_caller]
    pub(crate) fn write_for<R>(&self, tenant: Option<&str>, f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        match self {
            Db::Sqlite(lite) => lite.write(f),
            Db::Postgres(pg) => pg.write(tenant.map_or(Lock::Writer, Lock::Tenant), true, f),
        }
    }

    /// Runs `f` in a transaction whose commit is not flushed before this returns: for records
    /// that the start-up scan rebuilds if a power cut loses them (intake work items). A later
    /// durable commit makes it durable too, as either store's log is written in order. `f` may
    /// run more than once, as [`Db::write`]'s.
    #[track_caller]
    pub(crate) fn light<R>(&self, f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        self.light_for(None, f)
    }

    /// [`Db::light`], for a transaction of `tenant`'s rows only (see [`Db::write_for`]).
    #[track_caller]
    pub(crate) fn light_for<R>(&self, tenant: Option<&str>, f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        match self {
            Db::Sqlite(lite) => lite.light(f),
            Db::Postgres(pg) => pg.write(tenant.map_or(Lock::Writer, Lock::Tenant), false, f),
        }
    }

    /// [`Db::write`] for one statement that is atomic by itself (a compare-and-set of one
    /// row): on PostgreSQL it waits for no writer lock, as nothing can change between what it
    /// reads and what it writes.
    #[track_caller]
    pub(crate) fn write_statement<R>(&self, f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        match self {
            Db::Sqlite(lite) => lite.write(f),
            Db::Postgres(pg) => pg.write(Lock::None, true, f),
        }
    }

    /// Runs `f` on a connection for reading: it sees the last commit, and never waits for a
    /// writer.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&dyn Sql) -> Result<R>) -> Result<R> {
        match self {
            Db::Sqlite(lite) => lite.read(f),
            Db::Postgres(pg) => pg.read(f),
        }
    }

    /// Whether several nodes may share this database (PostgreSQL).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The SQLite writer, for what only SQLite has (a busy timeout, pragmas in tests).
    #[track_caller]
    pub(crate) fn sqlite_writer(&self) -> Option<Writer<'_>> {
        match self {
            Db::Sqlite(lite) => Some(lite.lock()),
            Db::Postgres(_) => None,
        }
    }

    /// Applies `f` to each of `items` in transactions that each hold the writer for about
    /// `slice`, letting other writers in between; their commits are not synced (see
    /// [`Db::light`]: the caller's records must be ones a power cut may lose). Gives the
    /// results of the items committed, in order, and the error that stopped the rest, if one
    /// did; a failed slice is rolled back whole.
    #[track_caller]
    pub(crate) fn sliced<T, R>(
        &self,
        items: &[T],
        slice: Duration,
        mut f: impl FnMut(&dyn Sql, &T) -> Result<R>,
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
}

/// The SQLite database. Clones share one writer connection and a pool of read-only ones.
///
/// One writer is what SQLite wants anyway; its lock is held for one short transaction at a
/// time. Readers (status, metrics, reports, the CLI's views) use their own connections, which
/// WAL lets run beside the writer, so a report streamed to a slow disk never holds up intake.
#[derive(Clone)]
pub(crate) struct Lite {
    conn: Arc<parking_lot::Mutex<Connection>>,
    readers: Arc<Readers>,
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

pub(super) fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

impl Lite {
    /// Wraps an open connection as the writer; readers open `path` read-only on demand.
    pub(super) fn new(conn: Connection, path: &Path) -> Lite {
        Lite {
            conn: Arc::new(parking_lot::Mutex::new(conn)),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
        }
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
    pub(crate) fn lock(&self) -> Writer<'_> {
        let caller = std::panic::Location::caller();
        let asked = Instant::now();
        let conn = self.conn.lock();
        let since = Instant::now();
        metrics::histogram!("dropsync_catalog_writer_wait_seconds").record((since - asked).as_secs_f64());
        Writer { conn, since, caller }
    }

    /// Runs `f` in a transaction whose commit is durable when this returns: what a side effect
    /// that follows relies on. `f` may run more than once (a store that detects a conflict
    /// between concurrent transactions runs it again), so it only computes what it returns.
    #[track_caller]
    pub(crate) fn write<R>(&self, mut f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let r = f(&*tx)?;
        tx.commit()?;
        Ok(r)
    }

    /// Runs `f` on a read-only connection of the pool: it sees the last commit, and never
    /// waits for the writer.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&dyn Sql) -> Result<R>) -> Result<R> {
        let pooled = self.readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.readers.path)?,
        };
        let conn = ReadConn {
            conn: Some(conn),
            readers: &self.readers,
        };
        f(&*conn)
    }

    /// Runs `f` in a transaction whose commit is not fsynced: for records that the start-up
    /// scan rebuilds if a power cut loses them (intake work items). A later full commit makes
    /// it durable too, as the write-ahead log is written in order. `f` may run more than once,
    /// as [`Db::write`]'s.
    #[track_caller]
    pub(crate) fn light<R>(&self, mut f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = (|| {
            let tx = conn.transaction()?;
            let r = f(&*tx)?;
            tx.commit()?;
            Ok(r)
        })();
        conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }
}

pub(super) fn configure(conn: &mut Connection) -> Result<()> {
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
