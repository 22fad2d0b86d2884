//! Leases on both stores: a forward stays its node's while the node renews it, is taken over
//! when it stops, and the late node's outcome changes nothing; named leases are one node's.
//! And PostgreSQL's write transactions: tenants' writer locks, an aborted transaction, a
//! tenant's handle given another's row.

use std::time::Duration;

use super::sql::params;
use super::tests::{Fixture, GRACE, fixture, fixture_pg, metadata, on_both_stores, recording, row, sent, states};
use super::*;

const LEASE: Duration = Duration::from_secs(10);

/// One ready conversation "C1" (its recording arrived first).
fn one_ready(cat: &Catalog) {
    recording(cat, "c1.wav", "aa", 1000);
    let (_, meta) = metadata(cat, "batch.csv", 1001);
    cat.files()
        .add_rows(meta, &[row(2, "C1", &["c1.wav"], "a")], 1002, GRACE)
        .unwrap();
    cat.files().finish_metadata(meta, Ok(())).unwrap();
}

on_both_stores! {
fn a_forward_is_taken_over_when_its_node_stops_renewing_and_the_late_outcome_changes_nothing(fx: Fixture) {
    let a = fx.cat.clone().for_node("a", LEASE);
    let b = fx.another().for_node("b", LEASE);
    one_ready(&a);
    let claimed = a.claim(2000, 10, &Allocations::new()).unwrap();
    assert_eq!(claimed.len(), 1);
    // A renews its lease; B finds nothing to take, neither when it starts nor on its ticks.
    assert_eq!(a.leases().keep(8000, 0).unwrap(), 0);
    assert_eq!(b.forward_queue().recover(9000).unwrap(), 0, "a live lease is left to its node");
    assert_eq!(b.leases().keep(17_000, 0).unwrap(), 0, "renewed at 8000 until 18000");
    assert!(b.claim(17_000, 10, &Allocations::new()).unwrap().is_empty());
    // A stops renewing: after its lease, B's tick takes the conversation back; B forwards it.
    assert_eq!(b.leases().keep(18_001, 0).unwrap(), 1);
    assert_eq!(states(&b), [("C1".into(), "ready".into())]);
    let work = b.claim(18_002, 10, &Allocations::new()).unwrap();
    assert_eq!(work.len(), 1);
    // A wakes up and finishes its copy: nothing changes, B's forward stands.
    let late = a.forward_queue().complete(claimed[0].id, &sent(&claimed[0]), "dir:x", "p/", 2000, 18_003);
    assert_eq!(late.unwrap(), Vec::<i64>::new());
    a.forward_queue().retry_later(claimed[0].id, "late", 20_000, 18_003).unwrap();
    a.forward_queue().fail(claimed[0].id, "late", 18_003).unwrap();
    assert_eq!(states(&b), [("C1".into(), "forwarding".into())]);
    let freed = b.forward_queue().complete(work[0].id, &sent(&work[0]), "dir:x", "p/", 18_002, 18_004).unwrap();
    assert!(!freed.is_empty());
    assert_eq!(states(&b), [("C1".into(), "forwarded".into())]);
    let deliveries: i64 = fx.cat.sql(|c| c.query_row("SELECT count(*) FROM deliveries", sql::params![], |r| r.get(0)));
    assert_eq!(deliveries, 1, "forwarded once");
    // Both nodes are known, with their last heartbeat.
    let nodes = a.leases().nodes().unwrap();
    let seen: Vec<(&str, i64)> = nodes.iter().map(|n| (n.node_id.as_str(), n.heartbeat_at)).collect();
    assert_eq!(seen, [("a", 8000), ("b", 18_001)]);
}

fn a_node_restarting_takes_back_its_own_forwards_and_no_one_elses(fx: Fixture) {
    let a = fx.cat.clone().for_node("a", LEASE);
    one_ready(&a);
    assert_eq!(a.claim(2000, 10, &Allocations::new()).unwrap().len(), 1);
    assert_eq!(fx.another().for_node("b", LEASE).forward_queue().recover(3000).unwrap(), 0);
    assert_eq!(fx.another().for_node("a", LEASE).forward_queue().recover(3000).unwrap(), 1);
    assert_eq!(states(&a), [("C1".into(), "ready".into())]);
}
}

/// Named leases (a tenant's intake, an FTP source, housekeeping) are asked of PostgreSQL only:
/// one SQLite node is alone with its database.
#[test]
fn a_named_lease_is_one_nodes_until_it_runs_out_or_is_given_back() {
    let fx = fixture_pg();
    let a = fx.cat.clone().for_node("a", LEASE).leases();
    let b = fx.another().for_node("b", LEASE).leases();
    assert!(a.try_take("intake acme", 1000).unwrap());
    assert!(!b.try_take("intake acme", 1001).unwrap());
    assert!(b.try_take("intake beta", 1001).unwrap(), "another name is free");
    a.release("intake beta").unwrap();
    assert!(
        !a.try_take("intake beta", 1002).unwrap(),
        "only its holder gives it back"
    );
    assert!(a.try_take("intake acme", 5000).unwrap(), "its holder renews it");
    a.keep(9000, 0).unwrap();
    assert!(!b.try_take("intake acme", 18_999).unwrap(), "renewed until 19000");
    assert!(b.try_take("intake acme", 19_001).unwrap(), "run out: taken over");
    assert!(!a.try_take("intake acme", 19_002).unwrap());
    b.release("intake acme").unwrap();
    assert!(a.try_take("intake acme", 19_003).unwrap(), "given back");

    let lone = fixture().cat.leases();
    assert!(lone.try_take("intake acme", 0).unwrap() && lone.try_take("intake acme", 0).unwrap());
}

/// On PostgreSQL, a transaction of one tenant's rows waits only for that tenant's and for
/// everyone's: tenant b commits while tenant a's is open; a second of a's, and one of
/// everyone's, wait until a's ends.
#[test]
fn one_tenants_writes_run_beside_anothers_and_wait_for_their_own_and_for_everyones() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};
    let fx = fixture_pg();
    let (inside, is_inside) = mpsc::channel();
    let (go, wait_go) = mpsc::channel::<()>();
    let db = fx.cat.db.clone();
    let first = std::thread::spawn(move || {
        db.write_for(Some("a"), |_| {
            inside.send(()).unwrap();
            wait_go.recv().unwrap();
            Ok(())
        })
    });
    is_inside.recv().unwrap();
    let (db, (b_done, b_committed)) = (fx.cat.db.clone(), mpsc::channel());
    std::thread::spawn(move || b_done.send(db.write_for(Some("b"), |_| Ok(()))));
    let b = b_committed.recv_timeout(Duration::from_secs(30));
    assert!(matches!(b, Ok(Ok(()))), "b waited for a: {b:?}");
    let waiting = |scope: Option<&'static str>| {
        let (db, done) = (fx.cat.db.clone(), Arc::new(AtomicBool::new(false)));
        let flag = done.clone();
        let t = std::thread::spawn(move || {
            db.write_for(scope, |_| Ok(())).unwrap();
            flag.store(true, Ordering::SeqCst);
        });
        (t, done)
    };
    let (second, second_done) = waiting(Some("a"));
    let (everyone, everyone_done) = waiting(None);
    let not_granted = || {
        fx.cat
            .db
            .read(|c| {
                c.query_row(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    params![],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap()
    };
    let started = std::time::Instant::now();
    while not_granted() < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "the two did not queue");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!second_done.load(Ordering::SeqCst) && !everyone_done.load(Ordering::SeqCst));
    go.send(()).unwrap();
    first.join().unwrap().unwrap();
    second.join().unwrap();
    everyone.join().unwrap();
    assert!(second_done.load(Ordering::SeqCst) && everyone_done.load(Ordering::SeqCst));
}

/// A transaction whose closure set a failed statement's error aside is not reported committed:
/// PostgreSQL rolled it back, and the caller hears so.
#[test]
fn a_transaction_a_failed_statement_aborted_is_an_error_not_a_silent_rollback() {
    let fx = fixture_pg();
    let outcome = fx.cat.db.write(|tx| {
        tx.execute(
            "INSERT INTO leases (name, owner, until) VALUES ('x', 'a', 1)",
            params![],
        )?;
        let _ = tx.execute("INSERT INTO no_such_table VALUES (1)", params![]);
        Ok(())
    });
    assert!(outcome.is_err(), "{outcome:?}");
    let kept = fx
        .cat
        .db
        .read(|c| c.query_row("SELECT count(*) FROM leases", params![], |r| r.get::<_, i64>(0)))
        .unwrap();
    assert_eq!(kept, 0);
    // The connection it used went away; the next transaction commits.
    fx.cat.leases().try_take("y", 0).unwrap();
}

/// A tenant's handle refuses another tenant's metadata file rather than change its rows
/// beside that tenant's own transactions.
#[test]
fn a_tenants_handle_refuses_another_tenants_metadata_file() {
    let fx = fixture_pg();
    let (_, meta) = metadata(&fx.cat, "batch.csv", 1000);
    let refused = fx
        .cat
        .files()
        .of("beta")
        .add_rows(meta, &[row(2, "C1", &["c1.wav"], "a")], 1001, GRACE);
    assert!(matches!(refused, Err(CatalogError::WrongTenant(..))), "{refused:?}");
    assert!(states(&fx.cat).is_empty());
}
