//! The catalog tests' fixtures: a fresh catalog on SQLite or on the tests' PostgreSQL, and
//! [`on_both_stores!`], which runs a test on each.

use super::*;

pub(super) const GRACE: i64 = 60_000;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
    /// The PostgreSQL database's URL, on that store.
    url: Option<String>,
    pub(super) cat: Catalog,
}

impl Fixture {
    /// Another catalog on the same database, as a second node (or process) opens it.
    pub(super) fn another(&self) -> Catalog {
        match &self.url {
            Some(url) => Catalog::open_postgres(url).unwrap(),
            None => Catalog::open(&self.path).unwrap(),
        }
    }
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db/dropsync.db");
    let cat = Catalog::open(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        url: None,
        cat,
    }
}

/// A catalog on a database of its own in the tests' PostgreSQL (see `pg_server.rs`).
pub(super) fn fixture_pg() -> Fixture {
    let url = super::pg_server::server().database();
    Fixture {
        _dir: tempfile::tempdir().unwrap(),
        path: std::path::PathBuf::new(),
        cat: Catalog::open_postgres(&url).unwrap(),
        url: Some(url),
    }
}

/// `fn name(fx: Fixture) { … }` becomes two tests, `name::sqlite` and `name::postgres`, each
/// given a fresh catalog on that store.
macro_rules! on_both_stores {
    ($($(#[$doc:meta])* fn $name:ident($fx:ident: Fixture) $body:block)*) => {$(
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($fx: Fixture) $body

            #[test]
            fn sqlite() {
                run(fixture())
            }

            #[test]
            fn postgres() {
                run(fixture_pg())
            }
        }
    )*};
}
pub(super) use on_both_stores;
