//! The catalog: every file, metadata row, conversation and delivery, in SQLite. The only module
//! that touches the database.
//!
//! # Handles, one per concern
//! [`Catalog`] opens the database and gives out handles over one [`Db`] (`db.rs`: the writer,
//! taken and timed only in [`Db::lock`], and the pooled readers). Each handle's file says who
//! uses it and which tables it writes:
//!
//! | Handle | File | Writes |
//! |---|---|---|
//! | [`IntakeQueue`] | `intake_queue.rs` | `intake_queue` (and a metadata file's `failed` mark with its item) |
//! | [`Files`] | `files.rs` (+ `rows.rs`, `revisions.rs`) | `files` on arrival, `metadata_files`, `refusals`, `recordings`, `conversations` up to `ready` or `expired`; takes `ftp_revisions` notes |
//! | [`ForwardQueue`] | `queue.rs` (+ `turns.rs`) | `conversations` from `ready` on, `deliveries`, `recordings`' keys, `files` after forwarding, `minute_usage` charges |
//! | [`FtpState`] | `ftp.rs` | `ftp_sources`, `ftp_files`, `ftp_revisions` |
//! | [`Reports`] | `views.rs` | report marks (`metadata_files.report_stale`, `tenant_reports`); `retry` |
//! | [`Minutes`] | `allocation.rs` | `held -> ready`; the charge helpers the forward queue's claim runs |
//! | [`History`] | `prune.rs` | deletes ended rows from every table; `conversation_counts` |
//!
//! A conversation's state is one machine shared by the stages: each handle writes only its own
//! transitions, and where two concerns change in one transaction (a claim and its minutes, an
//! arrival and the conversation it completes, a completion and the files it frees) they are
//! in one handle. A second store implements these handles.
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
//!   two keys, and `metadata.json` never exists without its recordings. The `forwarded` commit
//!   itself is not synced: a power cut may take it back, which only repeats the forward.
//! - **Archiving**: files leave the drop folder only after `forwarded` is committed and synced
//!   (the archive's claim is a synced commit after it in the log); the move is replayed at
//!   start-up if the crash fell between the move and its record.
//! - **Reports**: the "stale" flag is set by triggers in the same transaction as the change.

mod allocation;
mod console;
mod db;
mod files;
mod ftp;
mod intake_queue;
mod leases;
mod pg;
#[cfg(test)]
pub(crate) mod pg_server;
mod prune;
mod queue;
mod revisions;
mod rows;
mod schema;
mod schema_pg;
pub(crate) mod sql;
mod turns;
mod views;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::backoff::Retry;
use db::Db;

pub use allocation::{AllocationNow, Allocations, Minutes, MinutesStatus, allocations_for};
pub use console::{BatchFile, CallDetail, CallFilter, CallRow, CallSend, Console, RecordingDetail, RecordingFile};
pub use files::{Files, NewFile, PendingParse, Registered, RowInput};
pub use ftp::{AppliedListing, FtpSourceStatus, FtpState, PollRecord, RemoteFile, RemoteFileState, version_tag};
pub use intake_queue::{IntakeItem, IntakeKind, IntakeOutcome, IntakeQueue, NewIntake};
pub use leases::{Leases, NodeStatus};
pub use prune::{History, Pruned};
pub use queue::{Departure, ForwardQueue, Forwarded, RecordedFile, ToArchive, ToPurge, Work, WorkRecording};
pub use views::{ConversationView, OrphanLine, ReportLine, Reports, StaleReport, StatusView, TenantStatus};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog database: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("catalog database {path} was written by a newer dropsync (schema {found}, this one knows {known})")]
    TooNew { path: String, found: i64, known: i64 },
    #[error("catalog: {0}")]
    Corrupt(String),
    /// A handle of one tenant (`Files::of`, `ForwardQueue::of`) was given another's row: a
    /// bug, refused rather than run beside that tenant's transactions.
    #[error("catalog: {0} is not the tenant {1:?}'s")]
    WrongTenant(String, String),
    /// A query for one row found none (see [`sql::Optional`]).
    #[error("catalog: no such row")]
    NoRow,
}

/// A busy or locked database, a full disk or an I/O hiccup may clear; a broken constraint, a
/// corrupt file or a schema this build does not know will not.
impl Retry for CatalogError {
    fn retry_helps(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            CatalogError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                DatabaseBusy
                    | DatabaseLocked
                    | FileLockingProtocolFailed
                    | SchemaChanged
                    | OperationInterrupted
                    | OutOfMemory
                    | DiskFull
                    | SystemIoFailure
            ),
            CatalogError::Postgres(e) => pg::retry_helps(e),
            // Reading a row into a type, a statement: our code or the data, the same next time.
            CatalogError::Sqlite(_)
            | CatalogError::TooNew { .. }
            | CatalogError::Corrupt(_)
            | CatalogError::WrongTenant(..)
            | CatalogError::NoRow => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, CatalogError>;

pub use crate::arrival::Via;

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

/// The catalog: opens the database and gives out its handles, one per concern (see the
/// module doc for which handle owns which tables). Clones share one [`Db`]; callers on the
/// async runtime call it from `spawn_blocking` (see [`Catalog::run`]).
#[derive(Clone)]
pub struct Catalog {
    db: Db,
    /// Taken only with the writer held.
    held_derived: Arc<allocation::HeldDerived>,
    node: Arc<Node>,
}

/// This node, as the catalog's leases name it (SPEC §12).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: String,
    /// How long a lease lasts unless its node renews it.
    pub(crate) lease_ms: i64,
}

/// The lease of a node that did not say otherwise (SPEC §12: 60 s).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

impl Default for Node {
    fn default() -> Node {
        Node {
            id: "local".to_owned(),
            lease_ms: ms(DEFAULT_LEASE),
        }
    }
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
        db::configure(&mut conn)?;
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
        db::configure(&mut conn)?;
        check_schema(&conn, path, true)?;
        Ok(Catalog::with_writer(conn, path))
    }

    /// Opens an existing database read-only (CLI views while the daemon runs).
    pub fn open_read_only(path: &Path) -> Result<Catalog> {
        let conn = db::open_reader(path)?;
        check_schema(&conn, path, false)?;
        Ok(Catalog::with_writer(conn, path))
    }

    /// Connects to the PostgreSQL catalog at `url` (`[catalog] url`, SPEC §12) and applies
    /// pending migrations, once across the nodes: under an advisory lock, in one transaction.
    pub fn open_postgres(url: &str) -> Result<Catalog> {
        let pg = pg::Pg::connect(url)?;
        let known = schema_pg::MIGRATIONS.len() as i64;
        pg.batch(|client| {
            // Up to date (every start but the first, and every CLI call): no lock, no write.
            let exists: bool = client
                .query_one("SELECT to_regclass('dropsync_schema') IS NOT NULL", &[])?
                .get(0);
            if exists
                && client
                    .query_one("SELECT max(version) FROM dropsync_schema", &[])?
                    .get::<_, Option<i64>>(0)
                    == Some(known)
            {
                return Ok(());
            }
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            if tx
                .query_one("SELECT to_regclass('dropsync_schema') IS NULL", &[])?
                .get(0)
            {
                tx.batch_execute("CREATE TABLE dropsync_schema (version bigint NOT NULL)")?;
            }
            let found: i64 = match tx.query_opt("SELECT version FROM dropsync_schema", &[])? {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO dropsync_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            if found > known {
                return Err(CatalogError::TooNew {
                    path: "the PostgreSQL catalog".into(),
                    found,
                    known,
                });
            }
            for sql in &schema_pg::MIGRATIONS[found as usize..] {
                tx.batch_execute(sql)?;
            }
            if found < known {
                tx.execute("UPDATE dropsync_schema SET version = $1", &[&known])?;
            }
            Ok(tx.commit()?)
        })?;
        Ok(Catalog {
            db: Db::Postgres(pg),
            held_derived: Arc::default(),
            node: Arc::default(),
        })
    }

    fn with_writer(conn: Connection, path: &Path) -> Catalog {
        Catalog {
            db: Db::Sqlite(db::Lite::new(conn, path)),
            held_derived: Arc::default(),
            node: Arc::default(),
        }
    }

    /// How long a writer waits for another process's write lock (the CLI's `retry`, a
    /// backup) before the transaction fails and its work is retried later.
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<()> {
        match self.db.sqlite_writer() {
            Some(writer) => Ok(writer.busy_timeout(timeout)?),
            // PostgreSQL waits for row locks as long as the transaction lives.
            None => Ok(()),
        }
    }

    /// The same catalog as node `id` (`[catalog] node_id`), whose leases last `lease` unless
    /// renewed.
    pub fn for_node(self, id: &str, lease: Duration) -> Catalog {
        Catalog {
            node: Arc::new(Node {
                id: id.to_owned(),
                lease_ms: ms(lease),
            }),
            ..self
        }
    }

    /// Whether several nodes may share this catalog (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    /// Leases and heartbeats of this node.
    pub fn leases(&self) -> Leases {
        Leases {
            db: self.db.clone(),
            node: self.node.clone(),
        }
    }

    /// Arrivals, metadata rows and the conversations they make (intake).
    pub fn files(&self) -> Files {
        Files {
            db: self.db.clone(),
            tenant: None,
        }
    }

    /// The intake work items (intake's lanes and scans; forwarding, for a recording that changed).
    pub fn intake_queue(&self) -> IntakeQueue {
        IntakeQueue { db: self.db.clone() }
    }

    /// The forwarding queue and the files it frees (forwarding, archiving, purging).
    pub fn forward_queue(&self) -> ForwardQueue {
        ForwardQueue {
            db: self.db.clone(),
            node: self.node.clone(),
            tenant: None,
        }
    }

    /// What the FTP pollers know of each source.
    pub fn ftp_state(&self) -> FtpState {
        FtpState { db: self.db.clone() }
    }

    /// Reports, the CLI's views and its retry.
    pub fn reports(&self) -> Reports {
        Reports { db: self.db.clone() }
    }

    /// What the web console reads.
    pub fn console(&self) -> Console {
        Console { db: self.db.clone() }
    }

    /// Minute allocations and usage.
    pub fn minutes(&self) -> Minutes {
        Minutes {
            db: self.db.clone(),
            held_derived: self.held_derived.clone(),
        }
    }

    /// Forgetting old history.
    pub fn history(&self) -> History {
        History { db: self.db.clone() }
    }

    /// Runs `f` in a transaction, for tests that look at or arrange rows directly, on either
    /// store.
    #[cfg(test)]
    #[track_caller]
    fn sql<R>(&self, f: impl FnMut(&dyn sql::Sql) -> Result<R>) -> R {
        self.db.write(f).unwrap()
    }

    /// The SQLite writer, for tests of SQLite itself (pragmas, query plans).
    #[cfg(test)]
    #[track_caller]
    fn lock(&self) -> db::Writer<'_> {
        self.db.sqlite_writer().expect("a SQLite catalog")
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
/// (A PostgreSQL catalog is always migrated before it is read.)
fn has_table(conn: &dyn sql::Sql, name: &str) -> Result<bool> {
    use sql::Optional;
    if conn.dialect() == sql::Dialect::Postgres {
        return Ok(true);
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            sql::params![name],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .is_some())
}

/// The advisory lock migrations of a PostgreSQL catalog run under ("dropsync" in ASCII).
const MIGRATION_LOCK: i64 = 0x6472_6f70_7379_6e63;

/// Milliseconds since the Unix epoch, the catalog's clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod ftp_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_busy_catalog_is_worth_a_retry_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (k INTEGER UNIQUE); BEGIN EXCLUSIVE;")
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let busy = CatalogError::from(other.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(busy.retry_helps(), "{busy}");
        holder.execute_batch("INSERT INTO t VALUES (1); COMMIT;").unwrap();
        let constraint = CatalogError::from(other.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(!constraint.retry_helps(), "{constraint}");

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
        let corrupt = Connection::open(&garbage)
            .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)))
            .map_err(CatalogError::from)
            .unwrap_err();
        assert!(!corrupt.retry_helps(), "{corrupt}");
        assert!(!CatalogError::Corrupt("conversation 7 vanished".into()).retry_helps());
    }
}
