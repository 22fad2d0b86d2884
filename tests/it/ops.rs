//! Operations: the systemd unit we ship, and readiness/watchdog/stop notifications.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The shipped unit, with ExecStart pointing at the binary under test (verify checks it exists).
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/dropsync.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/dropsync", BIN);
    let path = dir.join("dropsync.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is missing: apt-get install systemd (./scripts/test does)")
}

#[test]
fn the_unit_verifies_and_scores_an_exposure_of_2_or_lower() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = systemd_analyze(&["verify"], &unit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("dropsync.service:"),
        "systemd-analyze verify: {err}"
    );
    let out = systemd_analyze(&["security", "--offline=yes"], &unit);
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for dropsync.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

pub fn next_message(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_and_stopping_are_notified() {
    let mut d = Daemon::new("1h", ACME);
    let path = d.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    d.start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")]);
    next_message(&sock, "READY=1", Duration::from_secs(20));
    next_message(&sock, "WATCHDOG=1", Duration::from_secs(10));
    // Still pinging while working.
    d.put("acme", "w.wav", &audio("w", 100));
    d.put("acme", "w.csv", one_row_csv("W-1", "w.wav").as_bytes());
    d.wait_forwarded(1, Duration::from_secs(60));
    next_message(&sock, "WATCHDOG=1", Duration::from_secs(10));
    // A reload signal must never end the daemon.
    assert!(d.signal(libc::SIGHUP));
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.is_running(), "SIGHUP ended the daemon");
    let status = d.stop();
    next_message(&sock, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

/// An SFTP daemon whose config includes `tenants.d/*.toml`, where `tenant add` writes.
fn daemon_with_tenants_d() -> Daemon {
    let d = Daemon::with_sftp("");
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("include = [\"tenants.d/*.toml\"]\n{text}")).unwrap();
    d
}

/// `dropsync tenant add ID --key KEY.pub`.
fn tenant_add(d: &Daemon, id: &str, key: &Path) -> std::process::Output {
    d.cli(&[
        "tenant",
        "add",
        id,
        "--key",
        key.with_extension("pub").to_str().unwrap(),
    ])
}

#[test]
fn tenant_add_prints_how_to_connect_and_the_new_tenant_can_log_in() {
    let mut d = daemon_with_tenants_d();
    d.start();
    let key = d.dir.path().join("newco_key");
    make_key(&key);
    let out = tenant_add(&d, "newco", &key);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        format!("sftp port:      {}", d.sftp_port),
        "username:       newco".into(),
        "key:            SHA256:".into(),
    ] {
        assert!(text.contains(&want), "{want:?} missing in:\n{text}");
    }
    // Every host key's fingerprint, as the client will be shown them.
    let mut printed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("host key:"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("SHA256:")))
        .collect();
    printed.sort();
    let mut offered: Vec<String> = crate::host_keys::scanned(d.sftp_port)
        .into_iter()
        .map(|k| k.1)
        .collect();
    offered.sort();
    assert_eq!(offered.len(), 3, "{offered:?}");
    assert_eq!(printed, offered, "in:\n{text}");
    assert!(d.dir.path().join("tenants.d/newco.toml").is_file());
    // Adding it twice is refused.
    assert!(!tenant_add(&d, "newco", &key).status.success());
    d.stop();
    d.start();
    std::fs::write(d.dir.path().join("hello.wav"), b"RIFF").unwrap();
    let out = d.sftp_batch_with("newco", &key, "put hello.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the upload in newco's folder", Duration::from_secs(10), || {
        d.drop_dir("newco").join("hello.wav").is_file()
    });
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("check-config"));
    let out = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains(".TH dropsync 1") && page.contains("tenant"),
        "{page}"
    );
}

#[test]
fn commands_piped_into_a_closed_pipe_end_quietly() {
    // `dropsync status | head -1`: the reader is gone before the command writes.
    let mut d = Daemon::new("1h", ACME);
    d.start();
    for args in [&["status"][..], &["conversations", "--json"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&d.config)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGPIPE),
            "{args:?}: ended by SIGPIPE, as Unix tools are: {:?} {stderr}",
            out.status
        );
    }
}

fn can_log_in(d: &Daemon, user: &str, key: &Path) -> bool {
    d.sftp_batch_with(user, key, "ls\n").status.success()
}

/// `dropsync tenant add ID --key ARG`, with `stdin` on standard input.
fn tenant_add_arg(d: &Daemon, id: &str, arg: &str, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["tenant", "add", id, "--key", arg, "--config"])
        .arg(&d.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn tenant_add_takes_a_key_as_text_as_a_file_or_on_standard_input() {
    let mut d = daemon_with_tenants_d();
    d.start();
    let keys: Vec<std::path::PathBuf> = ["by_text", "by_file", "by_stdin"]
        .iter()
        .map(|name| {
            let key = d.dir.path().join(format!("{name}_key"));
            make_key(&key);
            key
        })
        .collect();
    let public = |key: &Path| std::fs::read_to_string(key.with_extension("pub")).unwrap();
    // Pasted as an operator copies it from an e-mail: one line, with its comment.
    let text = public(&keys[0]);
    let added = [
        ("by-text", tenant_add_arg(&d, "by-text", text.trim(), "")),
        (
            "by-file",
            tenant_add_arg(&d, "by-file", keys[1].with_extension("pub").to_str().unwrap(), ""),
        ),
        ("by-stdin", tenant_add_arg(&d, "by-stdin", "-", &public(&keys[2]))),
    ];
    for (id, out) in &added {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{id}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("username:       {id}")), "{id}: {stdout}");
    }
    // Text that is neither a file nor a key says both.
    let out = tenant_add_arg(&d, "broken", "ssh-ed25519 AAAAnot-base64 ops@acme", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not a public key") && err.contains("key 1 cannot be read"),
        "{err}"
    );
    assert!(!d.dir.path().join("tenants.d/broken.toml").exists());
    let out = tenant_add_arg(&d, "empty", "-", "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input holds no public key"));

    assert!(d.signal(libc::SIGHUP));
    for (id, key) in ["by-text", "by-file", "by-stdin"].iter().zip(&keys) {
        wait_for(
            &format!("{id} to log in after the reload"),
            Duration::from_secs(10),
            || can_log_in(&d, id, key),
        );
    }
    // beta is served meanwhile.
    let audio = d.beta_uploads("B-1");
    let forwarded = d.wait_forwarded(1, Duration::from_secs(60));
    assert_recordings(&d, &forwarded["B-1"], &[("B-1.wav", &audio)]);
}

#[test]
fn sighup_adds_and_removes_tenants_without_dropping_sessions_and_refuses_a_broken_config() {
    use std::io::Write;
    let mut d = daemon_with_tenants_d();
    d.start();
    // An acme session that stays open across the reloads.
    std::fs::write(d.dir.path().join("a.wav"), b"RIFFa").unwrap();
    std::fs::write(d.dir.path().join("b.wav"), b"RIFFb").unwrap();
    let mut session = d
        .sftp_command("acme", &d.key("acme"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    writeln!(stdin, "put a.wav").unwrap();
    stdin.flush().unwrap();
    wait_for("the first upload", Duration::from_secs(10), || {
        d.drop_dir("acme").join("a.wav").exists()
    });

    let key = d.dir.path().join("newco_key");
    make_key(&key);
    assert!(tenant_add(&d, "newco", &key).status.success());
    assert!(!can_log_in(&d, "newco", &key), "the tenant works before the reload");
    assert!(d.signal(libc::SIGHUP));
    wait_for("newco to log in after the reload", Duration::from_secs(10), || {
        can_log_in(&d, "newco", &key)
    });

    // A broken file: refused, the daemon stays up, the previous configuration stays in force.
    std::fs::write(
        d.dir.path().join("tenants.d/bad.toml"),
        "[[tenants]]\nid = \"Not Valid\"\n",
    )
    .unwrap();
    assert!(d.signal(libc::SIGHUP));
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.is_running());
    assert!(
        can_log_in(&d, "newco", &key),
        "a broken reload replaced the configuration"
    );
    std::fs::remove_file(d.dir.path().join("tenants.d/bad.toml")).unwrap();

    // Removing the tenant takes its login away.
    std::fs::remove_file(d.dir.path().join("tenants.d/newco.toml")).unwrap();
    assert!(d.signal(libc::SIGHUP));
    wait_for("newco to be refused", Duration::from_secs(10), || {
        !can_log_in(&d, "newco", &key)
    });

    // The acme session went through all of it and still works.
    writeln!(stdin, "put b.wav").unwrap();
    writeln!(stdin, "bye").unwrap();
    drop(stdin);
    let out = session.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the open session broke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(d.drop_dir("acme").join("b.wav")).unwrap(), b"RIFFb");
}

#[test]
fn sigterm_with_idle_sessions_exits_0_promptly() {
    use std::io::Write;
    let mut d = Daemon::with_sftp("");
    d.start();
    // A logged-in session doing nothing, and a connection that never logs in.
    let mut idle = d
        .sftp_command("acme", &d.key("acme"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = idle.stdin.take().unwrap();
    writeln!(stdin, "pwd").unwrap();
    stdin.flush().unwrap();
    // sftp echoes the command, then answers it: logged in once the answer is there.
    let mut out = std::io::BufReader::new(idle.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("Remote working directory") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the session ended"
        );
    }
    let _silent = std::net::TcpStream::connect(("127.0.0.1", d.sftp_port)).unwrap();
    let started = Instant::now();
    let status = d.stop();
    assert_eq!(status.code(), Some(0));
    // Idle sessions do not hold the stop for the whole drain time (30 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    drop(stdin);
    let _ = idle.wait();
}

#[test]
fn metrics_and_healthz_are_served_and_parse() {
    let mut d = Daemon::with_sftp("");
    let port = free_port();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    d.start();
    std::fs::write(d.dir.path().join("m.wav"), audio("m", 4000)).unwrap();
    std::fs::write(d.dir.path().join("m.csv"), one_row_csv("M-1", "m.wav")).unwrap();
    assert!(d.sftp_batch("acme", "acme", "put m.wav\nput m.csv\n").status.success());
    d.wait_forwarded(1, Duration::from_secs(60));
    wait_for("the metrics endpoint", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (status, _) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    // metadata.json reaches the sink just before the catalog records the conversation as
    // forwarded: the gauge, read from the catalog, follows a moment later.
    let mut body = String::new();
    wait_for(
        "the forwarded conversation in the gauge",
        Duration::from_secs(10),
        || {
            body = http_get(port, "/metrics").1;
            sample(
                &body,
                &["dropsync_conversations{", "state=\"forwarded\"", "tenant=\"acme\""],
            ) == Some(1.0)
        },
    );
    assert_eq!(
        sample(
            &body,
            &["dropsync_conversations{", "state=\"failed\"", "tenant=\"acme\""]
        ),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, &["dropsync_received_files_total{", "via=\"sftp\""]).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    assert!(
        sample(&body, &["dropsync_received_bytes_total{", "via=\"sftp\""]).unwrap_or(0.0) >= 4000.0,
        "{body}"
    );
    // Every hold of the catalog writer is timed: arrivals, parsing and the forward took it.
    assert!(
        sample(&body, &["dropsync_catalog_writer_hold_seconds_count"]).unwrap_or(0.0) >= 4.0,
        "{body}"
    );
    let p99 = sample(&body, &["dropsync_catalog_writer_hold_seconds{", "quantile=\"0.99\""]);
    let max = sample(&body, &["dropsync_catalog_writer_hold_seconds{", "quantile=\"1\""]);
    assert!(p99.is_some_and(|p| p > 0.0) && max >= p99, "{body}");
    // And so is every wait for it, which is what one tenant's work costs the others.
    assert!(
        sample(&body, &["dropsync_catalog_writer_wait_seconds_count"]).unwrap_or(0.0) >= 4.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, &["dropsync_forward_latency_seconds_count"]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &["dropsync_forwarded_total{", "tenant=\"acme\""]),
        Some(1.0),
        "{body}"
    );
    // Sessions: counted up and down, in all and per tenant.
    let held = d.paramiko(&format!(
        "import urllib.request\nopen_ = [connect() for _ in range(3)]\n\
         print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\n\
         for t, s in open_:\n    t.close()\n"
    ));
    let during = String::from_utf8_lossy(&held.stdout).into_owned();
    assert_eq!(sample(&during, &["dropsync_sftp_sessions"]), Some(3.0), "{during}");
    assert_eq!(
        sample(&during, &["dropsync_tenant_sessions{", "tenant=\"acme\""]),
        Some(3.0),
        "{during}"
    );
    wait_for("the sessions to be counted down", Duration::from_secs(10), || {
        let (_, body) = http_get(port, "/metrics");
        sample(&body, &["dropsync_sftp_sessions"]) == Some(0.0)
            && sample(&body, &["dropsync_tenant_sessions{", "tenant=\"acme\""]) == Some(0.0)
    });
    let (status, body) = http_get(port, "/healthz");
    assert!(status.contains("200") && body == "ok\n", "{status} {body}");
    assert!(http_get(port, "/nope").0.contains("404"));
}
