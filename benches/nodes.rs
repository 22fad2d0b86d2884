//! Several nodes benchmark (issue 24; run on demand, release build):
//!
//!     cargo bench --bench nodes -- [--conversations N] [--tenants K]
//!
//! The same work three ways, in one run: one node on SQLite, one node on PostgreSQL, and two
//! nodes on one PostgreSQL sharing one state_dir (the tests' private PostgreSQL, started here).
//! K tenants (default 4) share N conversations (default 20,000) of 1 KiB recordings that have
//! already arrived; timed from their metadata files' arrival until all N are forwarded to the
//! dir sink (polled on the nodes' /metrics). A first, untimed round of N gives the catalog a
//! history, and `ANALYZE` then gives PostgreSQL the statistics autovacuum keeps on a catalog in
//! use. Reported per setup: conversations/s, the catalog's statements per conversation (round
//! trips: `dropsync_catalog_statements_total` from each node's /metrics), and CPU seconds per
//! conversation of the dropsync processes and of PostgreSQL. The machine has two cores, which
//! two nodes and PostgreSQL share.
//!
//! `NODES_BENCH_PG_ONLY=1` skips SQLite; `NODES_BENCH_PG_STATS=1` prints PostgreSQL's table
//! statistics, and its costliest statements when the server runs with
//! `DROPSYNC_TEST_PG_SETTINGS="shared_preload_libraries=pg_stat_statements pg_stat_statements.track=all"`.

#[path = "../src/catalog/pg_server.rs"]
mod pg_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::{arg, status_json, wait};

const BIN: &str = env!("CARGO_BIN_EXE_dropsync");
const HEADER: &str = "Contact Reference,Agent Email,Contact Date,Audio Filename";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime (+ the children's, reaped) of `pid`, in seconds.
fn cpu_seconds(pid: u32, with_children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after "(comm) ": state is 0, utime 11, stime 12, cutime 13, cstime 14.
    let own = tick(11) + tick(12);
    let children = if with_children { tick(13) + tick(14) } else { 0.0 };
    // SAFETY: sysconf has no preconditions.
    (own + children) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Every PostgreSQL process's CPU, exited backends included (reaped by the postmaster).
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            let ppid_is_postgres = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(") ")
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .map(str::to_owned)
                })
                .and_then(|ppid| std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok())
                .is_some_and(|c| c.trim() == "postgres");
            total += cpu_seconds(pid, !ppid_is_postgres);
        }
    }
    total
}

/// The sum of the samples of `name` (every label set) on the node's /metrics.
fn metric(metrics_port: u16, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn statements(metrics_port: u16) -> f64 {
    metric(metrics_port, "dropsync_catalog_statements_total")
}

/// Summed over tenants in `dropsync status --json`: `pick` of each tenant's entry.
fn status_sum(config: &Path, pick: impl Fn(&serde_json::Value) -> &serde_json::Value) -> i64 {
    let v = status_json(config);
    v["tenants"]
        .as_object()
        .map(|t| t.values().map(|s| pick(s).as_i64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

struct Node {
    child: Child,
    config: PathBuf,
    metrics: u16,
}

fn start(dir: &Path, name: &str, state_dir: &Path, catalog: &str, tenants: usize) -> Node {
    let metrics = free_port();
    let config = dir.join(format!("{name}.toml"));
    let mut text = format!(
        "state_dir = \"{}\"\n{catalog}[sink]\ntype = \"dir\"\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        state_dir.display(),
        state_dir.join("outbox").display()
    );
    for t in 0..tenants {
        text.push_str(&format!(
            "[[tenants]]\nid = \"t{t}\"\n[tenants.mapping]\nconversation_id = \"Contact Reference\"\n\
             agent = \"Agent Email\"\ncontact_time = \"Contact Date\"\nrecording = \"Audio Filename\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("NODES_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    wait("a node's metrics", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok()
    });
    Node { child, config, metrics }
}

/// `n` recordings of 1 KiB, numbered from `first`, into the tenants' drop folders.
fn arrive(state: &Path, first: usize, n: usize, tenants: usize) {
    let mut audio =
        b"RIFF\xf8\x03\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x40\x1f\0\0\x01\0\x08\0data\xd4\x03\0\0".to_vec();
    audio.resize(1024, 0x55);
    for i in first..first + n {
        let mut a = audio.clone();
        a[44..52].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(state.join(format!("drop/t{}/c{i:07}.wav", i % tenants)), &a).unwrap();
    }
}

/// Tenant `t`'s metadata CSV for conversations `first..first + n`.
fn csv(first: usize, n: usize, tenants: usize, t: usize) -> String {
    let mut csv = format!("{HEADER}\n");
    for i in (first..first + n).filter(|i| i % tenants == t) {
        csv.push_str(&format!(
            "C-{i:07},agent{}@example.com,2019-05-03T09:{:02}:{:02}Z,c{i:07}.wav\n",
            i % 97,
            (i / 60) % 60,
            i % 60
        ));
    }
    csv
}

/// One setup: `nodes` nodes on `url` (SQLite when `None`); prints its line.
fn run(label: &str, url: Option<&str>, nodes: usize, n: usize, tenants: usize) {
    let dir = tempfile::tempdir().unwrap();
    let dir = if std::env::var("NODES_BENCH_KEEP").is_ok() {
        Box::leak(Box::new(dir)).path().to_path_buf()
    } else {
        dir.path().to_path_buf()
    };
    let state = dir.join("var");
    let running: Vec<Node> = (0..nodes)
        .map(|i| {
            let catalog = url.map_or(String::new(), |u| {
                format!("[catalog]\nurl = \"{u}\"\nnode_id = \"n{i}\"\n")
            });
            start(&dir, &format!("n{i}"), &state, &catalog, tenants)
        })
        .collect();
    let config = &running[0].config;
    // A catalog in use has history: a first round as big as the measured one, untimed, then
    // statistics as autovacuum keeps them (it would not have run yet on tables this new), so
    // that the plans are those of a live catalog.
    let round = |first: usize| {
        arrive(&state, first, n, tenants);
        wait("recordings to arrive", Duration::from_secs(3600), || {
            status_sum(config, |s| &s["files_waiting"]) as usize >= n
        });
        if let Some(u) = url {
            let mut c = postgres::Client::connect(u, postgres::NoTls).unwrap();
            c.batch_execute("ANALYZE").unwrap();
            // Counted from here (when the extension is loaded).
            if c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .is_ok()
            {
                let _ = c.batch_execute("SELECT pg_stat_statements_reset()");
            }
        }
        let cpu_before: Vec<f64> = running.iter().map(|r| cpu_seconds(r.child.id(), false)).collect();
        let statements_before: f64 = running.iter().map(|r| statements(r.metrics)).sum();
        let pg_before = postgres_cpu();
        let t0 = Instant::now();
        for t in 0..tenants {
            std::fs::write(
                state.join(format!("drop/t{t}/batch{first}.csv")),
                csv(first, n, tenants, t),
            )
            .unwrap();
        }
        // Polled on /metrics: a `status` each time would start a process and a PostgreSQL
        // backend, and load the cores being measured.
        wait("conversations to be forwarded", Duration::from_secs(3600), || {
            running
                .iter()
                .map(|r| metric(r.metrics, "dropsync_forwarded_total"))
                .sum::<f64>() as usize
                >= first + n
        });
        (t0, cpu_before, statements_before, pg_before)
    };
    round(0);
    let (t0, cpu_before, statements_before, pg_before) = round(n);
    let took = t0.elapsed().as_secs_f64();
    let cpu: f64 = running
        .iter()
        .zip(&cpu_before)
        .map(|(r, before)| cpu_seconds(r.child.id(), false) - before)
        .sum();
    let statements: f64 = running.iter().map(|r| statements(r.metrics)).sum::<f64>() - statements_before;
    let pg = if url.is_some() { postgres_cpu() - pg_before } else { 0.0 };
    if let (Some(u), Ok(_)) = (url, std::env::var("NODES_BENCH_PG_STATS")) {
        let mut c = postgres::Client::connect(u, postgres::NoTls).unwrap();
        for r in c
            .query(
                "SELECT relname, seq_scan, seq_tup_read, idx_scan, n_tup_upd, n_tup_ins FROM pg_stat_user_tables ORDER BY seq_tup_read DESC LIMIT 8",
                &[],
            )
            .unwrap()
        {
            println!(
                "  {}: seq_scan {} seq_tup_read {} idx_scan {:?} upd {} ins {}",
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, Option<i64>>(3),
                r.get::<_, i64>(4),
                r.get::<_, i64>(5)
            );
        }
        // With DROPSYNC_TEST_PG_SETTINGS=shared_preload_libraries=pg_stat_statements.
        if let Ok(rows) = c.query(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25",
            &[],
        ) {
            for r in rows {
                println!(
                    "  {:>7} calls {:>9.1} ms {:>8} rows  {}",
                    r.get::<_, i64>(0),
                    r.get::<_, f64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, String>(3)
                );
            }
            let _ = c.batch_execute("SELECT pg_stat_statements_reset()");
        }
        for r in running.iter() {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", r.metrics)).unwrap();
            use std::io::{Read, Write};
            write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            for l in body.lines().filter(|l| {
                l.starts_with("dropsync_catalog_conflicts_total")
                    || l.starts_with("dropsync_catalog_writer_hold_seconds{quantile=\"0.99\"}")
            }) {
                println!("  {l}");
            }
        }
    }
    for mut r in running {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
        let _ = r.child.wait();
    }
    println!(
        "nodes: {label}: {n} conversations ({tenants} tenants) in {took:.1} s = {:.0} conversations/s; \
         {:.1} catalog statements, {:.2} ms dropsync CPU, {:.2} ms PostgreSQL CPU per conversation",
        n as f64 / took,
        statements / n as f64,
        cpu * 1000.0 / n as f64,
        pg * 1000.0 / n as f64,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("nodes: benchmark");
        return;
    }
    let n = arg("--conversations", 20_000);
    let tenants = arg("--tenants", 4);
    let server = pg_server::server();
    if std::env::var("NODES_BENCH_PG_ONLY").is_err() {
        run("one node, SQLite", None, 1, n, tenants);
    }
    run("one node, PostgreSQL", Some(&server.database()), 1, n, tenants);
    run("two nodes, PostgreSQL", Some(&server.database()), 2, n, tenants);
}
