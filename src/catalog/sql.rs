//! The SQL every catalog handle speaks: one surface over SQLite and PostgreSQL, so that the
//! state machine and its crash-ordering rules are written once and the SQL differs only where
//! the dialects do ([`Sql::dialect`], [`pick`](Sql::pick)).
//!
//! Statements are written with SQLite's numbered placeholders (`?1`); the PostgreSQL store
//! rewrites them to `$1`. Values cross as [`Value`]s, which each store converts to what the
//! statement's parameter or column is, so an integer column read as `i64` on SQLite reads the
//! same from a `bigint`, a `numeric` sum or a `boolean` on PostgreSQL.

use super::{CatalogError, Result};

/// One SQL value, as both stores know them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    /// A NULL parameter that says what it stands for (an `Option<i64>` that is `None`), so
    /// that PostgreSQL need not guess (`?1 IS NULL OR tenant = ?1`). Never read back.
    NullOf(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What a NULL parameter stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

/// A Rust value that binds as a statement parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

/// The kind of SQL value a Rust type binds as (for its `None`).
pub(crate) trait Typed {
    const KIND: Kind;
}

/// A Rust value read from a column.
pub(crate) trait FromValue: Sized {
    /// `None` when the value is not of this type.
    fn from_value(v: &Value) -> Option<Self>;
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                // u64 and usize past i64::MAX (an inode) keep their bits, and read back the same.
                Value::Int(*self as i64)
            }
        }
        impl Typed for $t {
            const KIND: Kind = Kind::Int;
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    Value::Int(i) => Some(*i as $t),
                    _ => None,
                }
            }
        }
    )*};
}
int_values!(i64, i32, u32, u64, usize, u16);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl FromValue for Value {
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue + Typed> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::NullOf(T::KIND), ToValue::to_value)
    }
}
impl<T: Typed + ?Sized> Typed for &T {
    const KIND: Kind = T::KIND;
}
impl Typed for bool {
    const KIND: Kind = Kind::Int;
}
impl Typed for f64 {
    const KIND: Kind = Kind::Real;
}
impl Typed for str {
    const KIND: Kind = Kind::Text;
}
impl Typed for String {
    const KIND: Kind = Kind::Text;
}
impl Typed for Vec<u8> {
    const KIND: Kind = Kind::Blob;
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Parameters of a statement, in placeholder order: `params![a, b]`.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::catalog::sql::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::catalog::sql::ToValue),+] as &[&dyn $crate::catalog::sql::ToValue]
    };
}
pub(crate) use params;

/// A column index of a [`Row`] (as rusqlite's, so that `r.get(0)` infers the index type).
pub(crate) trait ColumnIndex {
    fn index(self) -> usize;
}
impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row of a result, read.
#[derive(Debug)]
pub(crate) struct Row {
    pub(super) values: Vec<Value>,
}

impl Row {
    /// Column `i` as a `T`; a NULL or a value of another type is an error that names both.
    pub(crate) fn get<I: ColumnIndex, T: FromValue>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = self
            .values
            .get(i)
            .ok_or_else(|| CatalogError::Corrupt(format!("no column {i} in a row of {}", self.values.len())))?;
        T::from_value(v).ok_or_else(|| {
            CatalogError::Corrupt(format!("column {i} holds {v:?}, not a {}", std::any::type_name::<T>()))
        })
    }
}

/// Which store a statement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection or a transaction of either store. Handles take `&dyn Sql`.
pub(crate) trait Sql {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the number of rows it changed.
    fn run(&self, sql: &str, params: &[Value]) -> Result<usize>;
    /// Runs a query and hands `f` each row as it is read (a report of a million rows is
    /// never held whole); an error from `f` stops it.
    fn each(&self, sql: &str, params: &[Value], f: &mut dyn FnMut(Row) -> Result<()>) -> Result<()>;

    /// Runs a query; every row it gives, read.
    fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut out = Vec::new();
        self.each(sql, params, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }
}

fn values(params: &[&dyn ToValue]) -> Vec<Value> {
    params.iter().map(|p| p.to_value()).collect()
}

impl dyn Sql + '_ {
    pub(crate) fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize> {
        self.run(sql, &values(params))
    }

    /// The first row, through `f`; [`CatalogError::NoRow`] when there is none (see
    /// [`Optional::optional`]).
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        let rows = self.rows(sql, &values(params))?;
        match rows.first() {
            Some(row) => f(row),
            None => Err(CatalogError::NoRow),
        }
    }

    /// Every row, through `f`.
    pub(crate) fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.rows(sql, &values(params))?.iter().map(f).collect()
    }

    /// Every row, streamed through `f` (see [`Sql::each`]).
    pub(crate) fn for_each(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row) -> Result<()>,
    ) -> Result<()> {
        self.each(sql, &values(params), &mut |r| f(&r))
    }

    /// `sqlite` or `postgres`, whichever this store speaks.
    pub(crate) fn pick<'q>(&self, sqlite: &'q str, postgres: &'q str) -> &'q str {
        match self.dialect() {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

/// `query_row`'s "no row" as `None`.
pub(crate) trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(CatalogError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One statement run, on either store: `dropsync_catalog_statements_total`, the catalog's
/// round trips (what a conversation costs a PostgreSQL catalog, `benches/nodes.rs`).
pub(super) fn counted() {
    metrics::counter!("dropsync_catalog_statements_total").increment(1);
}

// SQLite: statements from the connection's cache; values as rusqlite's.

impl Sql for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn run(&self, sql: &str, params: &[Value]) -> Result<usize> {
        counted();
        Ok(self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))?)
    }

    fn each(&self, sql: &str, params: &[Value], f: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        counted();
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            let values = (0..columns)
                .map(|i| r.get_ref(i).map(Value::from))
                .collect::<rusqlite::Result<_>>()?;
            f(Row { values })?;
        }
        Ok(())
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null | Value::NullOf(_) => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Value {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl<T: Sql + ?Sized> Sql for &T {
    fn dialect(&self) -> Dialect {
        (**self).dialect()
    }
    fn run(&self, sql: &str, params: &[Value]) -> Result<usize> {
        (**self).run(sql, params)
    }
    fn each(&self, sql: &str, params: &[Value], f: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        (**self).each(sql, params, f)
    }
}
