//! A private PostgreSQL for tests, as the FTP and S3 peers are started: `initdb` and `postgres`
//! from Debian's package, in a folder under the system's temp dir, on a free loopback port, as
//! the `postgres` user when the tests run as root (PostgreSQL refuses root). It lives as long
//! as the test process: the server gets SIGQUIT (an immediate stop) when the process exits,
//! and the folders of test processes that are gone are removed at the next start.
//!
//! Shared by the unit tests and the integration tests (`#[path]`), so it uses only std, libc
//! and the `postgres` client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running server: `database()` gives each caller a database of its own.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

const INSTALL: &str = "PostgreSQL is missing: apt-get install postgresql (./scripts/test does)";

/// The server of this test process, started on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

impl PgServer {
    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).expect("connect as postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(INSTALL)
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect(INSTALL)
}

/// (uid, gid) of the `postgres` user, when running as root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect(INSTALL);
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// A command that runs as `user` (when given) and is sent `death` when the thread that
/// started it ends (the server's thread lives as long as the process).
fn command(program: &Path, user: Option<(u32, u32)>, death: Option<i32>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(signal) = death
                && libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Removes the folders of earlier test processes that are gone.
fn sweep(tmp: &Path) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("dropsync-test-pg-")
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> PgServer {
    let bin = bin_dir();
    let user = run_as();
    let tmp = std::env::temp_dir();
    sweep(&tmp);
    let dir = tmp.join(format!("dropsync-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let data = dir.join("data");
    let out = command(&bin.join("initdb"), user, None)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .output()
        .expect(INSTALL);
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid)).unwrap();
    }
    let (program, dir_s, data_s) = (bin.join("postgres"), dir.clone(), data.clone());
    let extra_settings: Vec<String> = std::env::var("DROPSYNC_TEST_PG_SETTINGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // The server's parent is a thread that never ends, so that it is stopped with the process
    // and not with whichever test happened to start it.
    let (started, child) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let spawned = command(&program, user, Some(libc::SIGQUIT))
            .arg("-D")
            .arg(&data_s)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir_s)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
            ])
            .args(["-c", "shared_buffers=64MB", "-c", "max_pred_locks_per_transaction=256"])
            // More settings for a look inside (`shared_preload_libraries=pg_stat_statements`).
            .args(extra_settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let _ = started.send(spawned.map(|c| c.id()));
        loop {
            std::thread::park();
        }
    });
    child.recv().unwrap().expect(INSTALL);
    let server = PgServer { port, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while postgres::Client::connect(&server.url("postgres"), postgres::NoTls).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}
