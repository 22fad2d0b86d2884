//! The catalog on PostgreSQL (SPEC §12): the real binary with `[catalog] url` pointing at a
//! private PostgreSQL the test starts (see `src/catalog/pg_server.rs`).

use std::time::Duration;

use crate::harness::*;
use crate::pg_server;

const T: Duration = Duration::from_secs(60);

/// `daemon` with its catalog in a fresh database of the tests' PostgreSQL, as node `node`.
fn on_postgres(daemon: Daemon, node: &str) -> Daemon {
    let url = pg_server::server().database();
    daemon.with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[catalog]\nurl = \"{url}\"\nnode_id = \"{node}\"\n"),
    )
}

#[test]
fn one_node_on_postgresql_forwards_reports_and_answers_status_as_on_sqlite() {
    let mut d = on_postgres(Daemon::with_sftp(""), "node-a");
    d.start();
    let audio = audio("pg1", 8000);
    std::fs::write(d.dir.path().join("pg1.wav"), &audio).unwrap();
    std::fs::write(
        d.dir.path().join("pg.csv"),
        format!(
            "{HEADER}\n{}\n{}\n",
            csv_row("PG-1", "pg1.wav"),
            csv_row("PG-2", "../x.wav")
        ),
    )
    .unwrap();
    let out = d.sftp_batch("acme", "acme", "put pg1.wav\nput pg.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The other tenant is served meanwhile, through the same catalog.
    let beta = d.beta_uploads("pgb");

    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["PG-1"], &[("pg1.wav", &audio)]);
    assert_recordings(&d, &fwd["pgb"], &[("pgb.wav", &beta)]);
    let report = d.wait_report("acme", "pg.csv.report.csv", 2);
    assert_eq!(report[0], ["2", "PG-1", "pg1.wav", "forwarded", ""]);
    assert_eq!(report[1][3], "rejected", "{report:?}");
    // Nothing of the catalog is in state_dir: it is all in PostgreSQL.
    assert!(!d.dir.path().join("var/dropsync.db").exists());

    // The CLI reads the same catalog.
    let status = d.cli(&["status", "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["tenants"]["acme"]["states"]["forwarded"], 1, "{v}");
    assert_eq!(v["tenants"]["acme"]["states"]["rejected"], 1, "{v}");
    assert_eq!(v["tenants"]["beta"]["states"]["forwarded"], 1, "{v}");

    // A restart on the same database forwards nothing again.
    d.stop();
    d.start();
    let again = d.beta_uploads("pgc");
    let fwd = d.wait_forwarded(3, T);
    assert_recordings(&d, &fwd["pgc"], &[("pgc.wav", &again)]);
    let status = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["tenants"]["acme"]["states"]["forwarded"], 1, "{v}");
    assert_eq!(v["tenants"]["beta"]["states"]["forwarded"], 2, "{v}");
}
