//! The PostgreSQL store under the catalog handles, for several nodes sharing one catalog
//! (SPEC §12): a pool of connections, transactions that behave as if run one at a time, and
//! the [`Sql`] surface the handles speak.
//!
//! **Why writer locks, and whose.** The handles were written for SQLite's one writer: each
//! transaction reads, decides and writes as if nothing else ran meanwhile (an arrival
//! completing a conversation, a claim and its minutes). Here every write transaction first
//! takes transaction-scoped advisory locks, so that it still runs as if alone:
//! - one of everyone's rows (recovery, the keeper, housekeeping, arrivals) takes
//!   [`WRITER_LOCK`] exclusively, and runs alone;
//! - one of a single tenant's rows (a claim of the tenant whose turn it is, a forward's outcome
//!   and its archive claim, a metadata file's rows: the work each conversation costs; see
//!   `ForwardQueue::claim_turn`, `ForwardQueue::of` and `Files::of`) takes [`WRITER_LOCK`]
//!   shared and its tenant's lock exclusively, so it runs beside other tenants' and alone
//!   among its own. Tenants share no rows (the counters are per tenant or per file), so this
//!   is as if one at a time, under READ COMMITTED, provided a tenant's handle is given only
//!   that tenant's rows: the callers pass the tenant their work was claimed or read for, and
//!   `add_rows` and `claim_for_archive` refuse another's ([`super::CatalogError::WrongTenant`]);
//! - one statement atomic by itself (a lease taken or given back, a report marked written)
//!   takes no lock ([`Lock::None`]).
//!
//! The writer lock is always taken first, so no transaction holds a tenant's lock while it
//! waits for the writer lock.
//!
//! Readers never wait. `SERIALIZABLE` was tried first (same promise, concurrent writers): a
//! metadata file's `report_stale` and `conversation_counts` are rows every change of a batch
//! updates, so concurrent transactions of one tenant conflicted more than they committed
//! (5,000 retries for 2,000 conversations, half the throughput of one writer;
//! `benches/nodes.rs`). A transaction that still fails for a deadlock or a serialization
//! failure is run again from the start by [`Pg::write`], which is why the handles'
//! transaction closures only compute what they return.
//!
//! **Why the blocking `postgres` client.** The catalog is synchronous code that callers on the
//! runtime reach through `spawn_blocking` (see [`super::Catalog::run`]) and the CLI calls
//! directly; `postgres` is tokio-postgres' own blocking front (same repository), which drives
//! each connection on the calling thread, one round trip with no hop between threads.
//! deadpool-postgres is async only: every catalog call would need a `block_on` into another
//! runtime. The pool here is a few lines (as the SQLite readers' is).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{GenericClient, NoTls, Statement};

use super::sql::{Dialect, Kind, Row, Sql, Value};
use super::{CatalogError, Result};

/// Connections kept open per node at most: each blocking thread that works on the catalog at
/// once holds one. Past this, a caller waits for one to come back.
const MAX_CONNECTIONS: usize = 16;

/// The writer lock: every write transaction but a lone atomic statement takes it first,
/// exclusively or (one tenant's) shared ("dropsync writer" in spirit).
const WRITER_LOCK: i64 = 0x6472_6f70_7772_6974;

/// The advisory locks a write transaction takes first (see the module's doc).
#[derive(Clone, Copy)]
pub(crate) enum Lock<'a> {
    /// The writer lock: runs alone.
    Writer,
    /// The writer lock shared and the tenant's: runs beside other tenants' transactions.
    Tenant(&'a str),
    /// None: one statement that is atomic by itself.
    None,
}

/// The key space (the first key of the two-key form, apart from [`WRITER_LOCK`]'s one-key
/// space) of the tenants' writer locks.
const TENANT_LOCKS: i32 = 0x6474; // "dt"

/// A tenant's writer lock, the second key: FNV-1a of its id. Two tenants that share a key
/// only wait for each other.
fn tenant_key(tenant: &str) -> i32 {
    let hash = tenant
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash as i32
}

/// How many times a transaction that lost a serialization conflict is run again before its
/// error is returned (the caller's retry takes over from there).
const CONFLICT_RETRIES: u32 = 20;

/// The PostgreSQL catalog database. Clones share the pool.
#[derive(Clone)]
pub(crate) struct Pg {
    pool: Arc<Pool>,
}

struct Pool {
    config: postgres::Config,
    idle: Mutex<Idle>,
    returned: Condvar,
}

struct Idle {
    conns: Vec<PgConn>,
    open: usize,
}

/// One connection and the statements prepared on it, by the SQL the handles wrote.
struct PgConn {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
    /// Inside a write transaction: set from its `BEGIN` until its `COMMIT` or `ROLLBACK`. A
    /// connection dropped so (a panic in between) is closed, not pooled, and the server rolls
    /// the transaction back.
    in_transaction: bool,
}

/// A connection taken from the pool; back to it when dropped, unless it broke.
struct Taken<'a> {
    conn: Option<PgConn>,
    pool: &'a Pool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            Some(conn) if !conn.client.is_closed() && !conn.in_transaction => idle.conns.push(conn),
            _ => idle.open -= 1,
        }
        self.pool.returned.notify_one();
    }
}

impl Pg {
    /// Connects to `url` (a `postgres://` URL or a `key=value` string); the first connection
    /// is opened now, so a wrong URL or password is an error at start-up.
    pub(crate) fn connect(url: &str) -> Result<Pg> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| CatalogError::Corrupt(format!("[catalog] url: {e}")))?;
        let pg = Pg {
            pool: Arc::new(Pool {
                config,
                idle: Mutex::new(Idle {
                    conns: Vec::new(),
                    open: 0,
                }),
                returned: Condvar::new(),
            }),
        };
        blocking(|| pg.take().map(drop))?;
        Ok(pg)
    }

    fn take(&self) -> Result<Taken<'_>> {
        let pool = &*self.pool;
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.conns.pop() {
                return Ok(Taken { conn: Some(conn), pool });
            }
            if idle.open < MAX_CONNECTIONS {
                idle.open += 1;
                drop(idle);
                let client = connect(&pool.config).inspect_err(|_| {
                    pool.idle.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                })?;
                return Ok(Taken {
                    conn: Some(PgConn {
                        client,
                        statements: HashMap::new(),
                        in_transaction: false,
                    }),
                    pool,
                });
            }
            idle = pool.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `f` in a transaction under `lock`, again from the start if it fails for a conflict
    /// (a deadlock). `durable`: the commit waits for the WAL flush (the default);
    /// otherwise `synchronous_commit` is off for it, as SQLite's light commits are not synced.
    pub(crate) fn write<R>(
        &self,
        lock: Lock<'_>,
        durable: bool,
        mut f: impl FnMut(&dyn Sql) -> Result<R>,
    ) -> Result<R> {
        // One round trip (the simple protocol takes several statements): the transaction, its
        // locks, and for a light commit no wait for the WAL flush. The writer lock comes first
        // for every transaction, so a tenant's never waits for its tenant lock while holding
        // up a writer of everyone's.
        let lock = match lock {
            Lock::Writer => format!(" SELECT pg_advisory_xact_lock({WRITER_LOCK});"),
            Lock::Tenant(t) => format!(
                " SELECT pg_advisory_xact_lock_shared({WRITER_LOCK}), pg_advisory_xact_lock({TENANT_LOCKS}, {});",
                tenant_key(t)
            ),
            Lock::None => String::new(),
        };
        let begin = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED;{lock}{}",
            if durable {
                ""
            } else {
                " SET LOCAL synchronous_commit = off;"
            }
        );
        blocking(|| self.write_retrying(&begin, &mut f))
    }

    fn write_retrying<R>(&self, begin: &str, mut f: impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let outcome = self.try_write(begin, &mut f);
            metrics::histogram!("dropsync_catalog_writer_hold_seconds").record(started.elapsed().as_secs_f64());
            match outcome {
                Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, detail = ?conflict_detail(&e), "catalog transaction conflicted; running it again");
                    metrics::counter!("dropsync_catalog_conflicts_total").increment(1);
                    // A little later each time, jittered, so two nodes do not collide again in step.
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(10)) + jitter));
                }
                other => return other,
            }
        }
    }

    fn try_write<R>(&self, begin: &str, f: &mut impl FnMut(&dyn Sql) -> Result<R>) -> Result<R> {
        let mut taken = self.take()?;
        let conn = taken.conn.as_mut().expect("held until dropped");
        conn.in_transaction = true;
        conn.client.batch_execute(begin)?;
        let outcome = f(&PgSql {
            client: RefCell::new(&mut conn.client),
            statements: RefCell::new(&mut conn.statements),
        });
        match outcome {
            Ok(r) => {
                // The `SELECT` first: a COMMIT of a transaction that a failed statement aborted
                // (one whose error the closure set aside) rolls back without an error; the
                // `SELECT` fails there instead, and the connection is not pooled.
                conn.client.batch_execute("SELECT 1; COMMIT")?;
                conn.in_transaction = false;
                Ok(r)
            }
            Err(e) => {
                // The closure's error is the one to return (a conflict to run again, say); a
                // connection that cannot even roll back is closed, not pooled.
                if conn.client.batch_execute("ROLLBACK").is_ok() {
                    conn.in_transaction = false;
                }
                Err(e)
            }
        }
    }

    /// Runs `f` on a pooled connection, each statement in its own transaction (as SQLite's
    /// readers do).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&dyn Sql) -> Result<R>) -> Result<R> {
        blocking(|| self.read_now(f))
    }

    fn read_now<R>(&self, f: impl FnOnce(&dyn Sql) -> Result<R>) -> Result<R> {
        let mut taken = self.take()?;
        let PgConn { client, statements, .. } = taken.conn.as_mut().expect("held until dropped");
        let sql = PgSql {
            client: RefCell::new(client),
            statements: RefCell::new(statements),
        };
        f(&sql)
    }

    /// Runs `sql` (several statements, no parameters) on a connection of its own, outside the
    /// statement caches: migrations.
    pub(crate) fn batch(&self, f: impl FnOnce(&mut postgres::Client) -> Result<()>) -> Result<()> {
        blocking(|| {
            let mut taken = self.take()?;
            let conn = taken.conn.as_mut().expect("held until dropped");
            conn.statements.clear();
            f(&mut conn.client)
        })
    }
}

/// A new connection for the pool.
fn connect(config: &postgres::Config) -> Result<postgres::Client> {
    Ok(config.connect(NoTls)?)
}

/// Runs `f`, which blocks on PostgreSQL, where blocking is allowed. The client drives its
/// connection on a runtime of its own, which cannot start on a thread that is running async
/// tasks: a catalog call made straight from one (rather than through [`super::Catalog::run`])
/// hands that worker's tasks to another thread first (`block_in_place`).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn conflict_detail(e: &CatalogError) -> Option<String> {
    match e {
        CatalogError::Postgres(e) => e
            .as_db_error()
            .map(|d| format!("{} {:?} {:?}", d.message(), d.detail(), d.where_())),
        _ => None,
    }
}

/// A serialization failure or a deadlock: running the transaction again is the cure.
pub(crate) fn is_conflict(e: &CatalogError) -> bool {
    use postgres::error::SqlState;
    match e {
        CatalogError::Postgres(e) => {
            matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
        }
        _ => false,
    }
}

/// Whether a PostgreSQL error may clear by itself: a lost connection, a conflict, a server
/// starting up or shutting down, too many connections.
pub(crate) fn retry_helps(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    match e.code() {
        None => e.is_closed() || e.as_db_error().is_none(),
        Some(c) => [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ]
        .contains(c),
    }
}

/// The handles' [`Sql`] on a connection or a transaction.
struct PgSql<'a, C: GenericClient> {
    client: RefCell<&'a mut C>,
    statements: RefCell<&'a mut HashMap<String, Statement>>,
}

impl<C: GenericClient> PgSql<'_, C> {
    /// The statement for `sql`, prepared once per connection (with `?N` as `$N`) for the
    /// types of `params`: a parameter is what the handle binds (`bigint`, `text`…), as SQLite
    /// takes it, not what PostgreSQL would guess from where it stands (it cannot for `?1 IS
    /// NULL`, nor for `?1 - ?2`). A NULL leaves its parameter to PostgreSQL's inference.
    fn statement(&self, sql: &str, params: &[Value]) -> Result<Statement> {
        let types: Vec<Type> = params.iter().map(param_type).collect();
        let mut key = String::with_capacity(sql.len() + types.len());
        key.extend(types.iter().map(|t| match *t {
            Type::INT8 => 'i',
            Type::FLOAT8 => 'f',
            Type::TEXT => 't',
            Type::BYTEA => 'b',
            _ => 'n',
        }));
        key.push(':');
        key.push_str(sql);
        if let Some(s) = self.statements.borrow().get(&key) {
            return Ok(s.clone());
        }
        let prepared = self.client.borrow_mut().prepare_typed(&placeholders(sql), &types)?;
        self.statements.borrow_mut().insert(key, prepared.clone());
        Ok(prepared)
    }
}

impl<C: GenericClient> Sql for PgSql<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run(&self, sql: &str, params: &[Value]) -> Result<usize> {
        super::sql::counted();
        let stmt = self.statement(sql, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = self.client.borrow_mut().execute(&stmt, &refs)?;
        Ok(n as usize)
    }

    fn each(&self, sql: &str, params: &[Value], f: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        super::sql::counted();
        let stmt = self.statement(sql, params)?;
        let columns = stmt.columns().len();
        let mut client = self.client.borrow_mut();
        let mut rows = client.query_raw(&stmt, params.iter())?;
        while let Some(r) = rows.next()? {
            let values = (0..columns)
                .map(|i| r.try_get::<_, Value>(i))
                .collect::<std::result::Result<_, _>>()?;
            f(Row { values })?;
        }
        Ok(())
    }
}

/// The type a value binds as; a NULL's is left for PostgreSQL to infer (OID 0).
fn param_type(v: &Value) -> Type {
    match v {
        Value::Null => Type::new(String::new(), 0, postgres::types::Kind::Pseudo, String::new()),
        Value::NullOf(Kind::Int) => Type::INT8,
        Value::NullOf(Kind::Real) => Type::FLOAT8,
        Value::NullOf(Kind::Text) => Type::TEXT,
        Value::NullOf(Kind::Blob) => Type::BYTEA,
        Value::Int(_) => Type::INT8,
        Value::Real(_) => Type::FLOAT8,
        Value::Text(_) => Type::TEXT,
        Value::Blob(_) => Type::BYTEA,
    }
}

/// `?N` placeholders as `$N`, outside string literals and quoted names.
pub(crate) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

impl ToSql for Value {
    /// As the parameter's type wants it: an integer binds to `bigint`, `integer`, `smallint`,
    /// `boolean`, a float or text; text to text or JSON; NULL to anything.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null | Value::NullOf(_), _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::NUMERIC) => numeric(*i, out),
            (Value::Int(i), _) => i.to_string().as_str().to_sql(&Type::TEXT, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), _) => f.to_string().as_str().to_sql(&Type::TEXT, out),
            (Value::Text(s), &Type::JSONB) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            // PostgreSQL's text cannot hold NUL, which SQLite stores: a tenant's field that has
            // one (an agent column, a refused zip entry's name) keeps the rest of its value, with
            // U+FFFD where the NUL was, instead of failing the whole file on this store.
            (Value::Text(s), _) if s.contains('\0') => {
                out.extend_from_slice(s.replace('\0', "\u{FFFD}").as_bytes());
                Ok(IsNull::No)
            }
            (Value::Text(s), _) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Blob(b), _) => b.as_slice().to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// An integer as PostgreSQL's binary `numeric`: base-10000 digits, most significant first.
fn numeric(i: i64, out: &mut bytes::BytesMut) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    let mut digits = Vec::new();
    let mut n = i.unsigned_abs();
    while n > 0 {
        digits.push((n % 10_000) as i16);
        n /= 10_000;
    }
    digits.reverse();
    let weight = digits.len() as i16 - 1;
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.max(0).to_be_bytes());
    out.extend_from_slice(&(if i < 0 { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(IsNull::No)
}

impl<'a> FromSql<'a> for Value {
    /// Whatever the column is: integers (and booleans, and integral `numeric` sums) as
    /// [`Value::Int`], as SQLite gives them.
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::NUMERIC => from_numeric(raw)?,
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSONB => Value::Text(String::from_utf8(raw.get(1..).unwrap_or_default().to_vec())?),
            _ => Value::Text(String::from_utf8(raw.to_vec())?),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary `numeric` (a `sum()` of `bigint`s is one): an integer when it has no fraction.
fn from_numeric(raw: &[u8]) -> std::result::Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> std::result::Result<i16, Box<dyn std::error::Error + Sync + Send>> {
        let b = raw.get(i * 2..i * 2 + 2).ok_or("short numeric")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut value = 0f64;
    for k in 0..ndigits.max(0) as usize {
        value += f64::from(word(4 + k)?) * 10_000f64.powi(i32::from(weight) - k as i32);
    }
    if sign == 0x4000 {
        value = -value;
    }
    Ok(if dscale == 0 && value.abs() < 9.0e15 {
        Value::Int(value as i64)
    } else {
        Value::Real(value)
    })
}

#[cfg(test)]
mod tests {
    use super::super::sql::params;
    use super::*;

    #[test]
    fn values_round_trip_and_a_nul_in_text_does_not_fail_the_statement() {
        let pg = Pg::connect(&super::super::pg_server::server().database()).unwrap();
        let back = pg
            .write(Lock::Writer, true, |tx| {
                tx.execute(
                    "CREATE TEMP TABLE t (i bigint, f double precision, s text, b bytea, n bigint)",
                    params![],
                )?;
                tx.execute(
                    "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![-7i64, 2.5f64, "agent\0x", vec![0u8, 1], None::<i64>],
                )?;
                tx.query_row(
                    "SELECT i, f, s, b, n, (SELECT sum(i) FROM t), i IS NULL, ?1 FROM t",
                    params![None::<String>],
                    |r| Ok(r.values.clone()),
                )
            })
            .unwrap();
        assert_eq!(
            back,
            [
                Value::Int(-7),
                Value::Real(2.5),
                Value::Text("agent\u{FFFD}x".into()),
                Value::Blob(vec![0, 1]),
                Value::Null,
                Value::Int(-7),
                Value::Int(0),
                Value::Null,
            ]
        );
    }

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            placeholders("SELECT '?1', \"a?2\" FROM t WHERE a = ?1 AND b = ?12 AND c = ?"),
            "SELECT '?1', \"a?2\" FROM t WHERE a = $1 AND b = $12 AND c = ?"
        );
    }
}
