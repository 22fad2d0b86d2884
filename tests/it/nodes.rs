//! The catalog on PostgreSQL (SPEC §12): the real binary with `[catalog] url` pointing at a
//! private PostgreSQL the test starts (see `src/catalog/pg_server.rs`).

use std::time::Duration;

use crate::balancer::Haproxy;
use crate::ftp::{daemon_polling, resumed_at, slow_server_with_a_big_recording, wait_partial_download};
use crate::harness::*;
use crate::http_api::{ACME_TOKEN, ADMIN_TOKEN, daemon_with_tenant_tokens, requests, wait_http};
use crate::isolation::{ROOM_FOR_A_BIG_ZIP, long_to_unpack};
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
    let (a, b, url) = two_nodes_of(lease, || Daemon::with_sftp(""));
    (a, b, url)
}

/// Like [`two_nodes`], each node made by `make` (its own config folder); B gets A's tenant
/// keys, so that a client may reach either.
fn two_nodes_of(lease: &str, make: impl Fn() -> Daemon) -> (Daemon, Daemon, String) {
    let url = pg_server::server().database();
    let catalog = |node: &str| format!("[catalog]\nurl = \"{url}\"\nnode_id = \"{node}\"\nlease = \"{lease}\"\n");
    let a = make().with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n{}", catalog("node-a")),
    );
    let shared = a.dir.path().join("var");
    let b = make()
        .with_replaced(
            "state_dir = \"var\"\n",
            &format!("state_dir = \"{}\"\n{}", shared.display(), catalog("node-b")),
        )
        .with_replaced(
            "path = \"var/outbox\"",
            &format!("path = \"{}\"", shared.join("outbox").display()),
        );
    for key in ["acme_key", "acme_key.pub", "beta_key", "beta_key.pub"] {
        if a.dir.path().join(key).exists() {
            std::fs::copy(a.dir.path().join(key), b.dir.path().join(key)).unwrap();
        }
    }
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

/// An HTTP daemon (acme's and beta's API tokens) whose upload URLs name `public` (the
/// balancer); its own HTTP port is pushed to `ports`.
fn http_node(public: u16, ports: &std::cell::RefCell<Vec<u16>>) -> Daemon {
    let (d, port) = daemon_with_tenant_tokens(&format!("public_url = \"http://127.0.0.1:{public}\"\n"));
    ports.borrow_mut().push(port);
    d
}

#[test]
fn behind_haproxy_either_node_takes_sftp_and_http_and_urls_signed_by_a_are_taken_by_b() {
    let lb = Haproxy::ports(2);
    let http = std::cell::RefCell::new(Vec::new());
    let (mut a, mut b, url) = two_nodes_of("3s", || http_node(lb[1], &http));
    let (http_a, http_b) = (http.borrow()[0], http.borrow()[1]);
    a.start();
    b.start();
    wait_http(http_a);
    wait_http(http_b);
    let _lb = Haproxy::start(&lb, &[&[a.sftp_port, b.sftp_port], &[http_a, http_b]]);

    // SFTP through the balancer's one address: four sessions, round robin over the nodes. The
    // two recordings and their CSV each arrive in a session of their own.
    let (w1, w2) = (audio("lb-1", 12_000), audio("lb-2", 16_000));
    std::fs::write(a.dir.path().join("lb1.wav"), &w1).unwrap();
    std::fs::write(a.dir.path().join("lb2.wav"), &w2).unwrap();
    let csv = format!(
        "{HEADER}\n{}\n{}\n",
        csv_row("LB-1", "lb1.wav"),
        csv_row("LB-2", "lb2.wav")
    );
    std::fs::write(a.dir.path().join("lb.csv"), csv).unwrap();
    let beta = audio("lbb", 20_000);
    std::fs::write(a.dir.path().join("lbb.wav"), &beta).unwrap();
    std::fs::write(a.dir.path().join("lbb.csv"), beta_csv("lbb", "lbb.wav")).unwrap();
    for (user, batch) in [
        ("acme", "put lb1.wav\n"),
        ("acme", "put lb2.wav\n"),
        ("acme", "put lb.csv\n"),
        ("beta", "put lbb.wav\nput lbb.csv\n"),
    ] {
        let out = a.sftp_batch_at(lb[0], user, &a.key(user), batch);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for node in [&a, &b] {
        assert_eq!(
            node.log().matches("sftp login").count(),
            2,
            "round robin: {}",
            node.log()
        );
    }

    // HTTP: a batch whose upload URLs node A signed, uploaded and processed through node B;
    // then one call at a time through the balancer (its two requests reach both nodes).
    let (h1, h2) = (audio("lbh-1", 24_000), audio("lbh-2", 8_000));
    let script = format!(
        r#"
import io, zipfile
ACME = {{'Authorization': 'Bearer {ACME_TOKEN}'}}
A, B, LB = 'http://127.0.0.1:{http_a}', 'http://127.0.0.1:{http_b}', 'http://127.0.0.1:{lb_http}'
out = io.BytesIO()
with zipfile.ZipFile(out, 'w') as z:
    z.writestr('h1.wav', open({h1p:?}, 'rb').read())
r = requests.post(A + '/api/v1/calls/upload', json={{'metadata_filename': 'm.csv', 'audios_filename': 'a.zip'}}, headers=ACME)
assert r.status_code == 200, r.text
data = r.json()['data']
assert data['metadata_upload_url'].startswith(LB + '/'), data
r = requests.put(data['metadata_upload_url'].replace(LB, B), data={csv:?}.encode())
assert r.status_code == 200, r.text
r = requests.put(data['audio_upload_url'].replace(LB, B), data=out.getvalue())
assert r.status_code == 200, r.text
r = requests.post(B + '/api/v1/calls/process-upload', json={{'metadata_key': data['metadata_key'], 'audios_key': data['audio_key']}}, headers=ACME)
assert r.status_code == 200, r.text
call = {{'call_date': '2024-08-06', 'call_time': '09:15:00', 'agent': 'ann@acme.example', 'conversation_id': 'LBH-2'}}
r = requests.post(LB + '/api/v2/workspace/acme/conversation/upload_data/', json=call, headers=ACME)
assert r.status_code == 200, r.text
r = requests.put(r.json()['upload_url'], data=open({h2p:?}, 'rb').read())
assert r.status_code == 200, r.text
print('ok')
"#,
        lb_http = lb[1],
        csv = format!("{HEADER}\n{}\n", csv_row("LBH-1", "h1.wav")),
        h1p = write(&a, "h1.wav", &h1),
        h2p = write(&a, "h2.wav", &h2),
    );
    assert_eq!(requests(http_a, &script).trim(), "ok");
    assert!(b.log().contains("batch queued (http)"), "{}", b.log());

    let fwd = a.wait_forwarded(5, T);
    assert_recordings(&a, &fwd["LB-1"], &[("lb1.wav", &w1)]);
    assert_recordings(&a, &fwd["LB-2"], &[("lb2.wav", &w2)]);
    assert_recordings(&a, &fwd["lbb"], &[("lbb.wav", &beta)]);
    assert_recordings(&a, &fwd["LBH-1"], &[("h1.wav", &h1)]);
    let key = fwd["LBH-2"]["recordings"][0]["key"].as_str().unwrap();
    assert_eq!(std::fs::read(a.outbox().join(key)).unwrap(), h2);
    wait_for("the deliveries", T, || deliveries(&url) == 5);
    assert_eq!(a.wait_report("acme", "lb.csv.report.csv", 2)[1][3], "forwarded");

    // The console through the balancer, each page twice (so from both nodes), on PostgreSQL:
    // a session signed in on one node is honoured by the other.
    let pages = format!(
        r#"
import re
LB = 'http://127.0.0.1:{lb_http}'
s = requests.Session()
# A connection per request: HAProxy balances connections, so the nodes take turns.
s.headers['Connection'] = 'close'
r = s.post(LB + '/console/login', data={{'token': {ADMIN_TOKEN:?}}})
assert r.status_code == 200 and '/console/login' not in r.url, r.text
for path in ['/console/', '/console/tenants', '/console/tenants/acme', '/console/tenants/beta',
             '/console/calls', '/console/calls?tenant=acme', '/console/onboard', '/console/upload']:
    for node in range(2):
        r = s.get(LB + path)
        assert r.status_code == 200 and '/console/login' not in r.url, (path, r.status_code, r.text[:500])
calls = s.get(LB + '/console/calls').text
for id in ['LB-1', 'LB-2', 'lbb', 'LBH-1', 'LBH-2']:
    assert id in calls, (id, calls)
ids = set(re.findall(r'/console/calls/([0-9]+)', calls))
assert len(ids) == 5, ids
for i in ids:
    r = s.get(LB + '/console/calls/' + i)
    assert r.status_code == 200 and 'forwarded' in r.text, (i, r.text[:500])
print('ok')
"#,
        lb_http = lb[1]
    );
    assert_eq!(requests(http_a, &pages).trim(), "ok");
}

/// Writes `bytes` to `name` in `d`'s folder; returns the path, for a script.
fn write(d: &Daemon, name: &str, bytes: &[u8]) -> String {
    let path = d.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn an_ftp_source_is_polled_by_one_node_at_a_time_and_survives_that_nodes_death() {
    let (mut ftp, big) = slow_server_with_a_big_recording("nodes-ftp", "NF-1");
    let source = format!("ftp://calls@127.0.0.1:{}/", ftp.port);
    let (mut a, mut b, url) = two_nodes_of("3s", || daemon_polling(&source, "connections = 1"));
    a.start();
    b.start();
    // Both nodes poll every 300 ms; one holds the source's lease and downloads.
    wait_partial_download(&a);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let holder: String = c
        .query_one("SELECT owner FROM leases WHERE name LIKE 'ftp %'", &[])
        .unwrap()
        .get(0);
    if holder == "node-a" {
        a.kill9();
    } else {
        b.kill9();
    }
    ftp.kill();
    ftp.start_with(&["--throttle", "0"]);
    // (The outbox is A's, shared by both.)
    let fwd = a.wait_forwarded(1, T);
    assert_recordings(&a, &fwd["NF-1"], &[("big.wav", &big)]);
    let survivor = if holder == "node-a" { &b } else { &a };
    wait_for("the delivery", T, || deliveries(&url) == 1);
    let log = ftp.served_log();
    // The survivor took over the source after the lease and resumed the dead node's download.
    let resumed = resumed_at(&ftp);
    assert_eq!(resumed.len(), 1, "one resumed RETR: {log}");
    assert!(resumed[0] >= 1 << 20, "resumed from {}", resumed[0]);
    assert!(
        survivor.log().contains("resuming an interrupted download"),
        "{}",
        survivor.log()
    );
    // One poll at a time across the nodes: never two sessions logged in at once.
    let most = log
        .lines()
        .filter_map(|l| l.strip_prefix("sessions "))
        .map(|n| n.parse::<u32>().unwrap())
        .max();
    assert_eq!(most, Some(1), "{log}");
}

#[test]
fn nodes_killed_at_random_points_of_a_200_conversation_batch_lose_and_duplicate_nothing() {
    let (mut a, mut b, url) = two_nodes("3s");
    a.start();
    b.start();
    let seed = fastrand::u64(..);
    eprintln!("kill points seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let recordings: Vec<Vec<u8>> = (0..200).map(|i| audio(&format!("rk{i}"), 3_000 + i * 7)).collect();
    let drop_dir = a.drop_dir("acme");
    let mut outstanding = Vec::new();
    std::thread::scope(|s| {
        // The arrivals: four CSVs of 50 rows, each after its 50 recordings, written into the
        // shared drop folder as a client of either node would leave them.
        s.spawn(|| {
            for (part, chunk) in recordings.chunks(50).enumerate() {
                let mut csv = format!("{HEADER}\n");
                for (i, audio) in chunk.iter().enumerate().map(|(i, a)| (part * 50 + i, a)) {
                    std::fs::write(drop_dir.join(format!("rk{i}.wav")), audio).unwrap();
                    csv += &format!("{}\n", csv_row(&format!("RK-{i}"), &format!("rk{i}.wav")));
                }
                std::fs::write(drop_dir.join(format!("rk{part}.csv")), csv).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        // Meanwhile, and while the batch is read, matched and forwarded: four kills of either
        // node, each restarted at once. The first lands while the files arrive, the others
        // once a random number of conversations is forwarded.
        std::thread::sleep(Duration::from_millis(rng.u64(50..800)));
        let mut points: Vec<i64> = (0..3).map(|_| rng.i64(0..180)).collect();
        points.sort();
        for point in std::iter::once(0).chain(points) {
            wait_for("the kill point", T, || forwarded_in(&url) >= point);
            let node = if rng.bool() { &mut a } else { &mut b };
            node.kill9();
            outstanding.push(200 - forwarded_in(&url));
            node.start();
        }
    });
    eprintln!("conversations not yet forwarded at each kill: {outstanding:?}");
    // The kills landed inside the work, not after it.
    assert!(outstanding[3] > 0, "seed {seed}: {outstanding:?}");
    let fwd = a.wait_forwarded(200, Duration::from_secs(120));
    for (i, audio) in recordings.iter().enumerate() {
        assert_recordings(&a, &fwd[&format!("RK-{i}")], &[(&format!("rk{i}.wav"), audio)]);
    }
    wait_for("200 deliveries", T, || deliveries(&url) == 200);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let (conversations, forwarded, delivered): (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state = 'forwarded'), \
                 (SELECT count(DISTINCT conversation) FROM deliveries) FROM conversations",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((conversations, forwarded, delivered), (200, 200, 200), "seed {seed}");
    // Every key once in the sink: one recording and one metadata.json per conversation.
    let outbox: Vec<_> = walk(&a.outbox());
    assert_eq!(outbox.len(), 400, "seed {seed}: {outbox:?}");
    for part in 0..4 {
        let report = a.wait_report("acme", &format!("rk{part}.csv.report.csv"), 50);
        assert!(report.iter().all(|r| r[3] == "forwarded"), "seed {seed}: {report:?}");
    }
}

fn forwarded_in(url: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one("SELECT count(*) FROM conversations WHERE state = 'forwarded'", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_tenants_long_unpack_on_one_node_holds_up_no_other_tenant_on_either_node() {
    let (mut a, mut b, url) = two_nodes_of("3s", || {
        Daemon::with_sftp("").with_replaced("[matching]\n", ROOM_FOR_A_BIG_ZIP)
    });
    let zip_path = a.dir.path().join("big.zip");
    long_to_unpack(&zip_path);
    a.start();
    b.start();
    std::fs::rename(&zip_path, a.drop_dir("acme").join("big.zip")).unwrap();
    let unpacking = |d: &Daemon| d.log().contains("unpacking zip batch");
    wait_for("acme's zip to be unpacking", T, || unpacking(&a) || unpacking(&b));
    // beta, through each node in turn, while one of them unpacks acme's gigabyte.
    let through_a = a.beta_uploads("iso-a");
    let through_b = b.beta_uploads("iso-b");
    let fwd = a.wait_forwarded(2, T);
    assert_recordings(&a, &fwd["iso-a"], &[("iso-a.wav", &through_a)]);
    assert_recordings(&a, &fwd["iso-b"], &[("iso-b.wav", &through_b)]);
    // The logs are written in order: beta went out while the unpack still ran.
    let unpacked = |d: &Daemon| d.log().contains("zip batch unpacked");
    assert!(
        !unpacked(&a) && !unpacked(&b),
        "the zip was unpacked before beta was served"
    );
    wait_for("the zip's report", T, || {
        a.report("acme", "big.zip.report.csv").exists()
    });
    assert_eq!(deliveries(&url), 2);
}
