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

/// Node A and node B: one catalog on PostgreSQL, one state_dir and one sink (A's folders, as
/// shared storage would hold them), each with its own SFTP port, tenants and keys; leases of
/// `lease`.
fn two_nodes(lease: &str) -> (Daemon, Daemon, String) {
    let url = pg_server::server().database();
    let catalog = |node: &str| format!("[catalog]\nurl = \"{url}\"\nnode_id = \"{node}\"\nlease = \"{lease}\"\n");
    let a = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n{}", catalog("node-a")),
    );
    let shared = a.dir.path().join("var");
    let b = Daemon::with_sftp("")
        .with_replaced(
            "state_dir = \"var\"\n",
            &format!("state_dir = \"{}\"\n{}", shared.display(), catalog("node-b")),
        )
        .with_replaced(
            "path = \"var/outbox\"",
            &format!("path = \"{}\"", shared.join("outbox").display()),
        );
    // The harness waits for a node's own drop folder: B's is A's.
    std::fs::create_dir_all(b.drop_dir("acme")).unwrap();
    (a, b, url)
}

/// A WAV of `len` bytes, quickly: noise after a real header.
fn big_wav(len: usize) -> Vec<u8> {
    let mut v = audio("big", 1044);
    let data = (len - 44) as u32;
    v[4..8].copy_from_slice(&(36 + data).to_le_bytes());
    v[40..44].copy_from_slice(&data.to_le_bytes());
    v.resize(len, 0);
    fastrand::Rng::with_seed(7).fill(&mut v[1044..]);
    v
}

fn deliveries(url: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one("SELECT count(*) FROM deliveries", &[]).unwrap().get(0)
}

#[test]
fn audio_through_node_a_and_its_csv_through_node_b_are_forwarded_once() {
    let (mut a, mut b, url) = two_nodes("3s");
    a.start();
    b.start();
    let audio = audio("ab1", 8000);
    std::fs::write(a.dir.path().join("ab1.wav"), &audio).unwrap();
    let out = a.sftp_batch("acme", "acme", "put ab1.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        b.dir.path().join("ab.csv"),
        format!("{HEADER}\n{}\n", csv_row("AB-1", "ab1.wav")),
    )
    .unwrap();
    let out = b.sftp_batch("acme", "acme", "put ab.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The other tenant, through B, meanwhile.
    let beta = b.beta_uploads("abb");

    let fwd = a.wait_forwarded(2, T);
    assert_recordings(&a, &fwd["AB-1"], &[("ab1.wav", &audio)]);
    assert_recordings(&a, &fwd["abb"], &[("abb.wav", &beta)]);
    assert_eq!(
        a.wait_report("acme", "ab.csv.report.csv", 1)[0],
        ["2", "AB-1", "ab1.wav", "forwarded", ""]
    );
    // Once: one delivery each, whichever node forwarded it, and it stays so.
    wait_for("the nodes to settle", T, || {
        drop_files(&a, "acme").is_empty() && drop_files(&a, "beta").is_empty()
    });
    assert_eq!(deliveries(&url), 2);
    // Both nodes in status, through either one.
    let status = b.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{v}");
    assert_eq!(v["tenants"]["acme"]["states"]["forwarded"], 1, "{v}");
}

#[test]
fn a_node_killed_mid_forward_has_its_forward_finished_by_the_other_within_the_lease() {
    let (mut a, mut b, url) = two_nodes("3s");
    a.start();
    // A big recording, so that A is still copying it when it is killed.
    let big = big_wav(300_000_000);
    a.put("acme", "big.wav", &big);
    a.put(
        "acme",
        "big.csv",
        format!("{HEADER}\n{}\n", csv_row("BIG-1", "big.wav")).as_bytes(),
    );
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    wait_for("node A to hold the forward's lease", T, || {
        c.query_opt(
            "SELECT 1 FROM conversations WHERE state = 'forwarding' AND lease_owner = 'node-a'",
            &[],
        )
        .unwrap()
        .is_some()
    });
    a.kill9();
    assert_eq!(deliveries(&url), 0, "A died before it recorded the forward");
    b.start();
    // (The sink is A's outbox: shared storage, as the drop folders are.)
    let fwd = a.wait_forwarded(1, T);
    assert_recordings(&a, &fwd["BIG-1"], &[("big.wav", &big)]);
    wait_for("B to record the forward", T, || deliveries(&url) == 1);
    let row = c
        .query_one(
            "SELECT state, lease_owner FROM conversations WHERE conversation_id = 'BIG-1'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
        ("forwarded".into(), None)
    );
    assert!(
        b.log().contains("node stopped renewing its lease") || b.log().contains("taken over"),
        "{}",
        b.log()
    );
}
