//! FTP/FTPS polling against real servers on loopback: pyftpdlib (plain, explicit TLS, without
//! MLSD/EPSV, throttled); vsftpd, ProFTPD and Pure-FTPd are in `ftp_servers`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// A pyftpdlib server serving `root` (a temp folder the test writes into directly).
pub struct FtpServer {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl FtpServer {
    /// `args`: extra flags of tests/peers/ftpd.py (`--tls C K`, `--throttle N`, `--no-mlsd`...).
    pub fn new(args: &[&str]) -> FtpServer {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().with_extension("log");
        FtpServer {
            root,
            port: free_port(),
            log,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    pub fn start_with(&mut self, more: &[&str]) {
        let child = Command::new("python3")
            .arg(format!("{PEERS}/ftpd.py"))
            .arg("--root")
            .arg(self.root.path())
            .args(["--port", &self.port.to_string(), "--log"])
            .arg(&self.log)
            .args(&self.args)
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is missing");
        self.child = Some(child);
        let port = self.port;
        let started = std::time::Instant::now();
        loop {
            if speaks_ftp(port) {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                let mut err = String::new();
                use std::io::Read;
                let _ = c.stderr.take().unwrap().read_to_string(&mut err);
                assert!(
                    !err.contains("No module named"),
                    "pyftpdlib/pyopenssl are missing: pip install pyftpdlib pyopenssl (./scripts/test does)\n{err}"
                );
                panic!("the FTP server exited: {err}");
            }
            assert!(started.elapsed() < T, "the FTP server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the server vanishes mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub fn served_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether an FTP server greets on `port` (a 220 reply, single- or multi-line).
fn speaks_ftp(port: u16) -> bool {
    greeting(port, 4).is_some_and(|b| b == b"220 " || b == b"220-")
}

/// Tenant "acme" (usual mapping) polling `url` with `extra` source keys; password "secret"
/// in a file. Replies are awaited 5 s unless `extra` sets its own `timeout`.
pub fn daemon_polling(url: &str, extra: &str) -> Daemon {
    let timeout = if extra.contains("timeout =") {
        ""
    } else {
        "timeout = \"5s\"\n"
    };
    let tenants = format!(
        "{ACME}[[tenants.ftp]]\nurl = \"{url}\"\npassword_file = \"ftp.pass\"\npoll_interval = \"300ms\"\n\
         min_age = \"0s\"\n{timeout}{extra}\n"
    );
    let d = Daemon::new("1h", &tenants);
    std::fs::write(d.dir.path().join("ftp.pass"), "secret\n").unwrap();
    d
}

/// The `status --json` entry of the only FTP source.
pub fn source_status(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ftp_sources"][0].clone()
}

fn wait_polled_after(d: &Daemon, since: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for("a poll after the restart", T, || {
        last = source_status(d);
        last["last_ok_at"].as_str().is_some_and(|t| t > since)
    });
    last
}

/// Waits until more than 1 MiB of a download sits in its temp file.
pub fn wait_partial_download(d: &Daemon) {
    let drop_dir = d.drop_dir("acme");
    wait_for("a partial download", T, || {
        std::fs::read_dir(&drop_dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".dropsync-pull-")
                && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
        })
    });
}

fn now_iso() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn audio_then_metadata_csv_and_json_are_pulled_once_across_restarts() {
    let mut ftp = FtpServer::new(&[]);
    ftp.start();
    let (a1, a2) = (audio("f1", 70_000), encoded("f2", "mp3", 1_000));
    ftp.put("a1.wav", &a1);
    ftp.put("2026/11/a2.mp3", &a2);
    let mut d = daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "");
    d.start();
    // Audio first: it is pulled and waits for its metadata.
    wait_for("the recordings pulled", T, || source_status(&d)["files_pulled"] == 2);
    ftp.put("batch.csv", one_row_csv("F-1", "a1.wav").as_bytes());
    ftp.put(
        "2026/11/batch.json",
        br#"[{"Contact Reference": "F-2", "Agent Email": "b@x", "Contact Date": "2019-05-03T09:27:23Z", "Audio Filename": "a2.mp3"}]"#,
    );
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["F-1"], &[("a1.wav", &a1)]);
    assert_recordings(&d, &fwd["F-2"], &[("a2.mp3", &a2)]);
    assert_eq!(fwd["F-1"]["source"]["via"], "ftp", "{}", fwd["F-1"]);
    let s = source_status(&d);
    assert_eq!(s["files_pulled"], 4, "{s}");
    assert_eq!(
        s["bytes_pulled"],
        a1.len()
            + a2.len()
            + std::fs::metadata(ftp.root.path().join("batch.csv")).unwrap().len() as usize
            + std::fs::metadata(ftp.root.path().join("2026/11/batch.json"))
                .unwrap()
                .len() as usize
    );
    // The remote files stay (after_download = "keep") and are not pulled again, not even after
    // a restart.
    assert!(d.stop().success());
    let since = now_iso();
    std::thread::sleep(Duration::from_millis(1100));
    d.start();
    let s = wait_polled_after(&d, &since);
    let s2 = {
        std::thread::sleep(Duration::from_millis(700));
        source_status(&d)
    };
    assert_eq!(
        (s["files_pulled"].clone(), s2["files_pulled"].clone()),
        (4.into(), 4.into()),
        "{s2}"
    );
    assert_eq!(s2["remote_files"], 4);
    assert_eq!(s2["waiting"], 0);
    assert_eq!(d.forwarded().len(), 2);
    assert!(drop_files(&d, "acme").is_empty(), "{:?}", drop_files(&d, "acme"));
    assert_eq!(ftp.served_log().matches("RETR").count() / 2, 4, "each file served once");
}

/// A private CA and a server certificate for 127.0.0.1 that it signed, made with openssl.
/// Returns (CA certificate, server certificate, server key).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir), OPENSSL);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[test]
fn explicit_ftps_with_a_private_ca_and_a_broken_source_beside_it() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let mut ftp = FtpServer::new(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
    ftp.start();
    let a = audio("tls", 300_000);
    ftp.put("t.wav", &a);
    ftp.put("t.csv", one_row_csv("S-1", "t.wav").as_bytes());
    // "acme" trusts the server's certificate; "beta" does not, and must not hold acme up.
    let url = format!("ftps://calls@127.0.0.1:{}/", ftp.port);
    let tenants = format!(
        "{ACME}[[tenants.ftp]]\nurl = \"{url}\"\npassword_file = \"ftp.pass\"\npoll_interval = \"300ms\"\n\
         min_age = \"0s\"\nca_file = {:?}\n\n[[tenants]]\nid = \"beta\"\n[[tenants.ftp]]\nurl = \"{url}\"\n\
         password_file = \"ftp.pass\"\npoll_interval = \"300ms\"\n",
        ca.to_str().unwrap()
    );
    let mut d = Daemon::new("1h", &tenants);
    std::fs::write(d.dir.path().join("ftp.pass"), "secret").unwrap();
    d.start();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["S-1"], &[("t.wav", &a)]);
    let mut beta = serde_json::Value::Null;
    wait_for("beta's certificate error in status", T, || {
        let v: serde_json::Value =
            serde_json::from_slice(&d.cli(&["status", "--json", "--tenant", "beta"]).stdout).unwrap();
        beta = v["ftp_sources"][0].clone();
        beta["last_error"].as_str().is_some_and(|e| e.contains("certificate"))
    });
    assert_eq!(beta["files_pulled"], 0, "{beta}");
    let text = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("FTP sources:") && text.contains("last error"), "{text}");
}

/// The certificates the servers' own guides make (`openssl req -x509`, as Pure-FTPd's
/// README.TLS and `proftpd-gencert` do: self-signed, `CA:TRUE`, which WebPKI refuses as a
/// server's own) are accepted when given in `ca_file` (by their exact bytes) or pinned by key
/// in `tls_pin_sha256`; a source with a wrong pin is refused with an error that says what to do,
/// and holds no one up.
#[test]
fn ftps_with_a_self_signed_certificate_in_ca_file_or_pinned_by_key() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, pin) = crate::ftp_servers::guide_certificate(certs.path());
    let mut ftp = FtpServer::new(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
    ftp.start();
    let a = audio("selfsigned", 40_000);
    ftp.put("t.wav", &a);
    ftp.put("t.csv", one_row_csv("SS-1", "t.wav").as_bytes());
    let url = format!("ftps://calls@127.0.0.1:{}/", ftp.port);
    let source = |extra: &str| {
        format!(
            "[[tenants.ftp]]\nurl = \"{url}\"\npassword_file = \"ftp.pass\"\npoll_interval = \"300ms\"\nmin_age = \"0s\"\n{extra}\n"
        )
    };
    let tenants = format!(
        "{ACME}{}\n[[tenants]]\nid = \"beta\"\n{}\n[[tenants]]\nid = \"gamma\"\n{}",
        source(&format!("ca_file = {:?}", cert.to_str().unwrap())),
        source(&format!("tls_pin_sha256 = [\"{pin}\"]")),
        source(&format!("tls_pin_sha256 = [\"{}\"]", "00".repeat(32))),
    );
    let mut d = Daemon::new("1h", &tenants);
    std::fs::write(d.dir.path().join("ftp.pass"), "secret").unwrap();
    d.start();
    // acme: the certificate itself in ca_file.
    assert_recordings(&d, &d.wait_forwarded(1, T)["SS-1"], &[("t.wav", &a)]);
    // beta: its key pinned (beta's mapping rejects acme's CSV, but the recording is pulled).
    wait_for("beta's pull", T, || {
        std::fs::read(d.drop_dir("beta").join("t.wav")).is_ok_and(|b| b == a)
    });
    // gamma: a wrong pin, and an error naming the way out, with the key to pin.
    let mut gamma = serde_json::Value::Null;
    wait_for("gamma's certificate error in status", T, || {
        let v: serde_json::Value =
            serde_json::from_slice(&d.cli(&["status", "--json", "--tenant", "gamma"]).stdout).unwrap();
        gamma = v["ftp_sources"][0].clone();
        gamma["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("tls_pin_sha256"))
    });
    let error = gamma["last_error"].as_str().unwrap();
    assert!(error.contains("ca_file") && error.contains(&pin), "{error}");
    assert_eq!(gamma["files_pulled"], 0, "{gamma}");
    assert!(!d.drop_dir("gamma").join("t.wav").exists());
}

#[test]
fn insecure_skip_verify_works_and_is_logged_loudly() {
    let certs = tempfile::tempdir().unwrap();
    let (_, cert, key) = certificates(certs.path());
    let mut ftp = FtpServer::new(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
    ftp.start();
    let a = audio("insecure", 5_000);
    ftp.put("i.wav", &a);
    ftp.put("i.csv", one_row_csv("I-1", "i.wav").as_bytes());
    let mut d = daemon_polling(
        &format!("ftps://calls@127.0.0.1:{}/", ftp.port),
        "tls_insecure_skip_verify = true",
    );
    d.start();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["I-1"], &[("i.wav", &a)]);
    assert!(d.log().contains("TLS certificate verification is OFF"));
}

#[test]
fn a_growing_file_is_pulled_once_complete() {
    let mut ftp = FtpServer::new(&[]);
    ftp.start();
    let mut d = daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "")
        .with_replaced("min_age = \"0s\"", "min_age = \"1500ms\"");
    d.start();
    // Written in pieces over ~3 s, each piece well within min_age of the last.
    let full = audio("grow", 200_000);
    let path = ftp.root.path().join("g.wav");
    for chunk in full.chunks(20_000) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, chunk).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            source_status(&d)["files_pulled"].as_i64().unwrap_or(0),
            0,
            "pulled while growing"
        );
    }
    ftp.put("g.csv", one_row_csv("G-1", "g.wav").as_bytes());
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["G-1"], &[("g.wav", &full)]);
    assert_eq!(source_status(&d)["files_pulled"], 2);
}

/// A server sending 2 MiB/s, holding `big.wav` (6 MiB of audio seeded by `seed`) and
/// `big.csv` naming it as conversation `id`: its download takes 3 s, so a kill lands inside the
/// transfer. Returns the server, started, and the recording.
pub fn slow_server_with_a_big_recording(seed: &str, id: &str) -> (FtpServer, Vec<u8>) {
    let mut ftp = FtpServer::new(&["--throttle", "2097152"]);
    ftp.start();
    let big = audio(seed, 6 << 20);
    ftp.put("big.wav", &big);
    ftp.put("big.csv", one_row_csv(id, "big.wav").as_bytes());
    (ftp, big)
}

/// The offsets of the downloads the server resumed (`REST n` answered 350), from its log.
pub fn resumed_at(ftp: &FtpServer) -> Vec<u64> {
    ftp.served_log()
        .lines()
        .filter(|l| l.contains("REST ") && l.ends_with(" 350"))
        .map(|l| l.split_whitespace().rev().nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn the_server_going_away_mid_download_is_resumed_with_rest() {
    let (mut ftp, big) = slow_server_with_a_big_recording("resume", "R-1");
    let mut d = daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "connections = 1");
    d.start();
    wait_partial_download(&d);
    ftp.kill();
    wait_for("the poll error in status", T, || {
        source_status(&d)["last_error"].as_str().is_some()
    });
    assert!(d.forwarded().is_empty());
    ftp.start_with(&["--throttle", "0"]);
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["R-1"], &[("big.wav", &big)]);
    let resumed = resumed_at(&ftp);
    assert_eq!(resumed.len(), 1, "one resumed RETR: {}", ftp.served_log());
    assert!(resumed[0] >= 1 << 20, "resumed from {}", resumed[0]);
    // A good poll clears the error: status shows what is wrong now.
    wait_for("the error to be cleared", T, || {
        source_status(&d)["last_error"].is_null()
    });
}

/// A server that refuses DELE after a good pull: the file is pulled and forwarded once, and
/// the log and status speak of the delete, not of a failed pull.
#[test]
fn a_refused_delete_is_reported_as_a_delete_not_a_failed_pull() {
    let mut ftp = FtpServer::new(&["--no-delete"]);
    ftp.start();
    let a = audio("nodele", 3_000);
    ftp.put("n.wav", &a);
    ftp.put("n.csv", one_row_csv("N-1", "n.wav").as_bytes());
    let mut d = daemon_polling(
        &format!("ftp://calls@127.0.0.1:{}/", ftp.port),
        "after_download = \"delete\"",
    );
    d.start();
    assert_recordings(&d, &d.wait_forwarded(1, T)["N-1"], &[("n.wav", &a)]);
    wait_for("the refused delete in status", T, || {
        source_status(&d)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused to delete"))
    });
    let log = d.log();
    assert!(
        log.contains("pulled already, but the server refused to delete its copy"),
        "{log}"
    );
    assert!(!log.contains("could not pull"), "{log}");
    assert_eq!(ftp.served_log().matches("RETR").count() / 2, 2, "each file pulled once");
}

#[test]
fn after_download_delete_removes_remote_files_and_list_works_without_mlsd_and_epsv() {
    let mut ftp = FtpServer::new(&["--no-mlsd", "--no-epsv"]);
    ftp.start();
    let a = audio("del", 10_000);
    ftp.put("in/d.wav", &a);
    ftp.put("in/d.csv", one_row_csv("D-1", "d.wav").as_bytes());
    ftp.put("in/.hidden.wav", b"not for us");
    ftp.put("in/up.wav.filepart", b"still uploading");
    let mut d = daemon_polling(
        &format!("ftp://calls@127.0.0.1:{}/in", ftp.port),
        "after_download = \"delete\"",
    );
    d.start();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["D-1"], &[("d.wav", &a)]);
    wait_for("the remote files deleted", T, || {
        !ftp.root.path().join("in/d.wav").exists() && !ftp.root.path().join("in/d.csv").exists()
    });
    // Hidden and temp-named files are neither pulled nor deleted.
    assert!(ftp.root.path().join("in/.hidden.wav").exists());
    assert!(ftp.root.path().join("in/up.wav.filepart").exists());
    let log = ftp.served_log();
    assert_eq!(log.matches("DELE ").count(), 2, "{log}");
}

#[test]
fn a_ten_thousand_file_listing() {
    let mut ftp = FtpServer::new(&[]);
    ftp.start();
    for i in 0..10_000 {
        ftp.put(&format!("day{}/c{i:05}.wav", i % 10), b"x");
    }
    // Nothing is old enough to pull: this is about the listing and its bookkeeping.
    let mut d = daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "")
        .with_replaced("min_age = \"0s\"", "min_age = \"1h\"");
    d.start();
    let mut s = serde_json::Value::Null;
    wait_for("10,000 files listed", T, || {
        s = source_status(&d);
        s["remote_files"] == 10_000
    });
    assert_eq!(s["waiting"], 10_000);
    assert_eq!(s["files_pulled"], 0);
    // One more file shows up at the next poll.
    ftp.put("day0/late.wav", b"y");
    wait_for("10,001 files listed", T, || source_status(&d)["remote_files"] == 10_001);
}

#[test]
fn sighup_starts_and_stops_pollers_and_metrics_count_polls() {
    let mut ftp = FtpServer::new(&[]);
    ftp.start();
    let a = audio("hup", 3_000);
    ftp.put("h.wav", &a);
    ftp.put("h.csv", one_row_csv("H-1", "h.wav").as_bytes());
    let mut d = Daemon::new("1h", ACME);
    std::fs::write(d.dir.path().join("ftp.pass"), "secret").unwrap();
    let port = free_port();
    let base = std::fs::read_to_string(&d.config).unwrap() + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    std::fs::write(&d.config, &base).unwrap();
    d.start();
    // `[[tenants.ftp]]` after `[metrics]` still belongs to the last tenant, acme.
    let source = format!(
        "[[tenants.ftp]]\nurl = \"ftp://calls@127.0.0.1:{}/\"\npassword_file = \"ftp.pass\"\npoll_interval = \"200ms\"\nmin_age = \"0s\"\n",
        ftp.port
    );
    std::fs::write(&d.config, format!("{base}{source}")).unwrap();
    assert!(d.signal(libc::SIGHUP));
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["H-1"], &[("h.wav", &a)]);
    let polls = || {
        let (_, body) = http_get(port, "/metrics");
        sample(
            &body,
            &["dropsync_ftp_polls_total{", "result=\"ok\"", "tenant=\"acme\""],
        )
        .unwrap_or(0.0)
    };
    let (_, body) = http_get(port, "/metrics");
    assert!(
        sample(&body, &["dropsync_received_files_total{", "via=\"ftp\""]).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    assert!(
        sample(&body, &["dropsync_received_bytes_total{", "via=\"ftp\""]).unwrap_or(0.0) >= 3000.0,
        "{body}"
    );
    assert!(polls() >= 1.0, "{body}");
    let last_poll = |body: &str| sample(body, &["dropsync_ftp_last_poll_timestamp_seconds{", "tenant=\"acme\""]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last_poll(&body).is_some_and(|t| (now - t).abs() < 120.0), "{body}");

    // Removed from the config: its poller stops.
    std::fs::write(&d.config, &base).unwrap();
    assert!(d.signal(libc::SIGHUP));
    let mut last = polls();
    wait_for("the poller to stop", T, || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = polls();
        let stopped = now == last;
        last = now;
        stopped
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(polls(), last, "still polling after the source was removed");
    // Its last poll is cleared, so that no alert says it stopped being polled.
    let (_, body) = http_get(port, "/metrics");
    assert!(last_poll(&body).is_some_and(f64::is_nan), "{body}");
}

#[test]
fn sigterm_mid_download_exits_0_and_the_next_start_resumes() {
    let mut ftp = FtpServer::new(&["--throttle", "2097152"]);
    ftp.start();
    let big = audio("term", 6 << 20);
    ftp.put("t.wav", &big);
    ftp.put("t.csv", one_row_csv("T-1", "t.wav").as_bytes());
    let mut d = daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "connections = 1");
    d.start();
    wait_partial_download(&d);
    let started = std::time::Instant::now();
    assert!(d.stop().success(), "exit status after SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(d.forwarded().is_empty());
    d.start();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["T-1"], &[("t.wav", &big)]);
    assert!(!resumed_at(&ftp).is_empty(), "resumed: {}", ftp.served_log());
}
