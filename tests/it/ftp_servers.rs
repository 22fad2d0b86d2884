//! FTP polling against the servers contact centres run: ProFTPD 1.3.8 and Pure-FTPd 1.0.50
//! (Debian's packages, unpacked into target/ftp-peers by ./scripts/ftp-peers), beside
//! pyftpdlib and vsftpd. Each case runs on every server where it exists.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ftp::source_status;
use crate::harness::*;

const T: Duration = Duration::from_secs(60);
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
const UNPACKED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ftp-peers/root");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Pyftpdlib,
    Vsftpd,
    Proftpd,
    PureFtpd,
}

/// How to run a server.
#[derive(Default)]
struct Opts {
    /// FTPS required, with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
    /// Pure-FTPd's `-L files:depth` listing cap.
    list_cap: Option<&'static str>,
    /// Pure-FTPd's own password hashing (argon2, about 3 s a login) instead of MD5-crypt.
    slow_hash: bool,
}

/// A running FTP server serving `home` as user "calls" (password "secret"; vsftpd:
/// anonymous, read-only). The server process runs as nobody where it switches users, so
/// file permissions apply to it even when the tests run as root.
struct Server {
    peer: Peer,
    home: tempfile::TempDir,
    port: u16,
    _conf: tempfile::TempDir,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unpacked(bin: &str) -> PathBuf {
    let path = Path::new(UNPACKED).join(bin);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/ftp-peers (./scripts/test does), which unpacks Debian's proftpd-core, \
         proftpd-mod-crypto, pure-ftpd and pure-ftpd-common into target/ftp-peers",
        path.display()
    );
    path
}

fn lib_path() -> String {
    format!("{UNPACKED}/usr/lib/x86_64-linux-gnu:{UNPACKED}/usr/lib")
}

/// ProFTPD and Pure-FTPd switch to the FTP user's uid, which needs root.
fn assert_root(peer: Peer) {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "{peer:?} switches to the FTP user's uid and needs root: run the suite as root (CI does)"
    );
}

impl Server {
    fn start(peer: Peer, opts: Opts) -> Server {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = match peer {
            Peer::Pyftpdlib => pyftpdlib(home.path(), port, &opts),
            Peer::Vsftpd => vsftpd(home.path(), conf.path(), port, &opts),
            Peer::Proftpd => proftpd(home.path(), conf.path(), port, &opts),
            Peer::PureFtpd => pure_ftpd(home.path(), conf.path(), port, &opts),
        };
        let mut server = Server {
            peer,
            home,
            port,
            _conf: conf,
            child,
        };
        wait_for(&format!("{peer:?} to listen"), T, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{peer:?} exited: {status}");
            }
            greeting(port, 4).is_some_and(|b| b == b"220 " || b == b"220-")
        });
        server
    }

    fn url(&self, scheme: &str) -> String {
        let user = if self.peer == Peer::Vsftpd {
            "anonymous"
        } else {
            "calls"
        };
        format!("{scheme}://{user}@127.0.0.1:{}/", self.port)
    }

    /// Writes a file the server serves, readable (and deletable) by the server's user.
    fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.home.path().join(rel);
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let tmp = dir.join(format!(".put-{}", std::process::id()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        // Renamed into place, so that no listing sees it half-written.
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }
}

fn pyftpdlib(home: &Path, port: u16, opts: &Opts) -> Child {
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{PEERS}/ftpd.py"))
        .arg("--root")
        .arg(home)
        .args(["--port", &port.to_string()]);
    if let Some((cert, key)) = &opts.tls {
        cmd.arg("--tls").arg(cert).arg(key);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is missing")
}

fn vsftpd(home: &Path, conf: &Path, port: u16, opts: &Opts) -> Child {
    let empty = conf.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut text = format!(
        "listen=YES\nlisten_ipv6=NO\nbackground=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
         anonymous_enable=YES\nlocal_enable=NO\nwrite_enable=NO\nanon_root={}\nno_anon_password=YES\n\
         seccomp_sandbox=NO\nsecure_chroot_dir={}\npasv_enable=YES\nrun_as_launching_user=YES\n",
        home.display(),
        empty.display(),
    );
    if let Some((cert, key)) = &opts.tls {
        // require_ssl_reuse is vsftpd's default: data connections must resume the control
        // connection's TLS session.
        text += &format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\n\
             require_ssl_reuse=YES\nrsa_cert_file={}\nrsa_private_key_file={}\n",
            cert.display(),
            key.display()
        );
    }
    let file = conf.join("vsftpd.conf");
    std::fs::write(&file, text).unwrap();
    Command::new("vsftpd")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vsftpd is missing: apt install vsftpd (./scripts/test does)")
}

/// ProFTPD as Debian ships it, with a virtual user (mod_auth_file) mapped to nobody and
/// chrooted to `home`; with TLS, `TLSRequired on` and the default rule that data connections
/// reuse the control connection's TLS session.
fn proftpd(home: &Path, conf: &Path, port: u16, opts: &Opts) -> Child {
    assert_root(Peer::Proftpd);
    let bin = unpacked("usr/sbin/proftpd");
    let hash = run(Command::new("openssl").args(["passwd", "-1", "secret"]), OPENSSL);
    let (passwd, group) = (conf.join("passwd"), conf.join("group"));
    std::fs::write(
        &passwd,
        format!("calls:{}:65534:65534::{}:/bin/false\n", hash.trim(), home.display()),
    )
    .unwrap();
    std::fs::write(&group, "nogroup:x:65534:\n").unwrap();
    for f in [&passwd, &group] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let d = conf.display();
    let mut text = format!(
        "ServerType standalone\nPort {port}\nDefaultAddress 127.0.0.1\nSocketBindTight on\nUseIPv6 off\n\
         User nobody\nGroup nogroup\nPidFile {d}/proftpd.pid\nScoreboardFile {d}/proftpd.scoreboard\n\
         DelayEngine off\nWtmpLog off\nUseReverseDNS off\nTransferLog none\nSystemLog {d}/system.log\n\
         AuthOrder mod_auth_file.c\nAuthUserFile {}\nAuthGroupFile {}\nRequireValidShell off\n\
         DefaultRoot ~\nModulePath {UNPACKED}/usr/lib/proftpd\n<Directory />\n  AllowOverwrite on\n</Directory>\n",
        passwd.display(),
        group.display()
    );
    if let Some((cert, key)) = &opts.tls {
        text += &format!(
            "LoadModule mod_tls.c\nTLSEngine on\nTLSRequired on\nTLSProtocol TLSv1.2 TLSv1.3\n\
             TLSRSACertificateFile {}\nTLSRSACertificateKeyFile {}\nTLSLog {d}/tls.log\n",
            cert.display(),
            key.display()
        );
    }
    let file = conf.join("proftpd.conf");
    std::fs::write(&file, text).unwrap();
    Command::new(bin)
        .args(["-n", "-q", "-c"])
        .arg(&file)
        .env("LD_LIBRARY_PATH", lib_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Pure-FTPd with a PureDB virtual user mapped to nobody, chrooted; `-L` caps listings.
fn pure_ftpd(home: &Path, conf: &Path, port: u16, opts: &Opts) -> Child {
    assert_root(Peer::PureFtpd);
    let bin = unpacked("usr/sbin/pure-ftpd");
    let pure_pw = unpacked("usr/bin/pure-pw");
    let (passwd, pdb) = (conf.join("pureftpd.passwd"), conf.join("pureftpd.pdb"));
    if opts.slow_hash {
        let mut child = Command::new(&pure_pw)
            .args(["useradd", "calls", "-u", "65534", "-g", "65534", "-d"])
            .arg(home)
            .arg("-f")
            .arg(&passwd)
            .env("LD_LIBRARY_PATH", lib_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"secret\nsecret\n").unwrap();
        assert!(child.wait().unwrap().success(), "pure-pw useradd");
    } else {
        let hash = run(Command::new("openssl").args(["passwd", "-1", "secret"]), OPENSSL);
        let line = format!("calls:{}:65534:65534::{}/./::::::::::::\n", hash.trim(), home.display());
        std::fs::write(&passwd, line).unwrap();
    }
    run(
        Command::new(&pure_pw)
            .arg("mkdb")
            .arg(&pdb)
            .arg("-f")
            .arg(&passwd)
            .env("LD_LIBRARY_PATH", lib_path()),
        "./scripts/ftp-peers unpacks pure-pw",
    );
    let mut cmd = Command::new(bin);
    cmd.args(["-S", &format!("127.0.0.1,{port}"), "-E", "-A", "-H"])
        .arg("-l")
        .arg(format!("puredb:{}", pdb.display()));
    if let Some(cap) = opts.list_cap {
        cmd.args(["-L", cap]);
    }
    if let Some((cert, key)) = &opts.tls {
        // -Y 3: TLS required on the control and the data connections.
        cmd.args(["-Y", "3", "-2", &format!("{},{}", cert.display(), key.display())]);
    }
    cmd.env("LD_LIBRARY_PATH", lib_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Tenant "acme" (the usual mapping) polling `server` every 300 ms, with `extra` source keys.
fn daemon_for(server: &Server, scheme: &str, extra: &str) -> Daemon {
    crate::ftp::daemon_polling(&server.url(scheme), extra)
}

/// Waits for `n` more good polls than `status` shows now (each poll rewrites `last_ok_at`).
fn wait_good_polls(d: &Daemon, n: usize) -> serde_json::Value {
    let mut last = source_status(d)["last_ok_at"].clone();
    let mut seen = 0;
    let mut status = serde_json::Value::Null;
    wait_for(&format!("{n} more good polls"), T, || {
        status = source_status(d);
        if status["last_ok_at"] != last && !status["last_ok_at"].is_null() {
            last = status["last_ok_at"].clone();
            seen += 1;
        }
        seen >= n
    });
    status
}

const ALL: [Peer; 4] = [Peer::Pyftpdlib, Peer::Vsftpd, Peer::Proftpd, Peer::PureFtpd];

/// A folder the FTP user may not read, a symlink loop and a link back up beside good files:
/// the good files are pulled and forwarded, the refused folder is named in `status` (with the
/// server's words) and logged once, nothing is pulled through a link, and the polls are good.
#[test]
fn an_unreadable_folder_or_a_link_loop_skips_only_that_folder_on_every_server() {
    for peer in ALL {
        let server = Server::start(peer, Opts::default());
        let a = audio(&format!("good {peer:?}"), 20_000);
        server.put("g.wav", &a);
        server.put("g.csv", one_row_csv("G-1", "g.wav").as_bytes());
        server.put("sub/s.wav", b"sub");
        server.put("locked/x.wav", b"secret");
        std::fs::set_permissions(server.path("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::os::unix::fs::symlink("loop-b", server.path("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", server.path("loop-b")).unwrap();
        std::os::unix::fs::symlink("..", server.path("sub/up")).unwrap();
        let mut d = daemon_for(&server, "ftp", "");
        d.start();
        assert_recordings(&d, &d.wait_forwarded(1, T)["G-1"], &[("g.wav", &a)]);
        wait_for(&format!("{peer:?}: sub/s.wav pulled"), T, || {
            std::fs::read(d.drop_dir("acme").join("sub/s.wav")).is_ok_and(|b| b == b"sub")
        });
        let status = wait_good_polls(&d, 3);
        assert!(status["last_error"].is_null(), "{peer:?}: {status}");
        assert!(
            !d.drop_dir("acme").join("sub/up").exists(),
            "{peer:?}: pulled through a link: {:?}",
            drop_files(&d, "acme")
        );
        // Only ProFTPD and Pure-FTPd drop to an unprivileged user: for pyftpdlib and vsftpd
        // (running as root here) the folder is readable, and there is no refusal to report.
        if matches!(peer, Peer::Proftpd | Peer::PureFtpd) {
            let incomplete = status["listing_incomplete"].as_str().unwrap_or_default();
            // The server's reply as it gave it, status code once.
            let words = if peer == Peer::Proftpd {
                "550 /locked: Permission denied"
            } else {
                "550 Can't check for file existence"
            };
            assert!(
                incomplete.contains(&format!("locked: not listed: {words}")),
                "{peer:?}: {status}"
            );
            assert!(!d.drop_dir("acme").join("locked/x.wav").exists());
            assert_eq!(
                d.log().matches("the listing is incomplete").count(),
                1,
                "{peer:?}: logged once, not at every poll"
            );
        }
        // Fixed on the server: pulled at the next poll, and status says the listing is whole.
        std::fs::set_permissions(server.path("locked"), std::fs::Permissions::from_mode(0o777)).unwrap();
        wait_for(&format!("{peer:?}: locked/x.wav pulled"), T, || {
            d.drop_dir("acme").join("locked/x.wav").exists()
        });
        let status = wait_good_polls(&d, 1);
        assert!(status["listing_incomplete"].is_null(), "{peer:?}: {status}");
    }
}

/// Pure-FTPd with `-L 100:5` lists 100 of a folder's 150 files and says so in its closing
/// reply: status says the listing is incomplete, in the server's words; nothing missing from
/// it is taken as gone; and with `after_download = "delete"` every file arrives over the polls.
/// Its password is hashed as `pure-pw` does by default (argon2, seconds per login), so the
/// second connection is usually still logging in when the files are in.
#[test]
fn a_listing_pure_ftpd_cuts_short_is_reported_and_every_file_still_arrives() {
    let server = Server::start(
        Peer::PureFtpd,
        Opts {
            list_cap: Some("100:5"),
            slow_hash: true,
            ..Opts::default()
        },
    );
    for i in 0..150 {
        server.put(&format!("big/c{i:03}.wav"), format!("call {i}").as_bytes());
    }
    // Argon2 logins take about 3 s on an idle machine, longer beside the rest of the suite:
    // the default reply timeout (60 s), not the tests' usual 5 s.
    let mut d = daemon_for(
        &server,
        "ftp",
        "after_download = \"delete\"\nconnections = 2\ntimeout = \"60s\"",
    );
    d.start();
    let mut seen_cut = false;
    wait_for("all 150 files pulled", T, || {
        let s = source_status(&d);
        seen_cut |= s["listing_incomplete"].as_str().is_some_and(|t| {
            t.contains("big: listing cut short by the server: 226") && t.contains("Output truncated to 100 matches")
        });
        s["files_pulled"] == 150
    });
    assert!(seen_cut, "status never said the listing was cut short");
    for i in 0..150 {
        let got = std::fs::read(d.drop_dir("acme").join(format!("big/c{i:03}.wav"))).unwrap();
        assert_eq!(got, format!("call {i}").as_bytes());
    }
    wait_for("the remote folder emptied", T, || {
        std::fs::read_dir(server.path("big")).unwrap().count() == 0
    });
    let status = wait_good_polls(&d, 1);
    assert!(status["listing_incomplete"].is_null(), "{status}");
    assert!(d.log().contains("the listing is incomplete"), "{}", d.log());
}

/// A certificate made the way the servers' guides say (`openssl req -x509 -nodes -newkey
/// rsa:2048`: self-signed, CA:TRUE). Returns (certificate, key, SHA-256 pin of its key).
pub fn guide_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir), OPENSSL);
    openssl(&[
        "req",
        "-x509",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-days",
        "2",
        "-subj",
        "/CN=ftp.example.com",
        "-keyout",
        "self.key",
        "-out",
        "self.pem",
    ]);
    openssl(&["x509", "-in", "self.pem", "-pubkey", "-noout", "-out", "self.pub"]);
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        "self.pub",
        "-outform",
        "der",
        "-out",
        "self.spki",
    ]);
    let pin = sha256_hex(&std::fs::read(dir.join("self.spki")).unwrap());
    (dir.join("self.pem"), dir.join("self.key"), pin)
}

/// FTPS required by ProFTPD (`TLSRequired on`, data connections must reuse the control
/// connection's session) and by Pure-FTPd (`-Y 3`), each with a guide-made certificate:
/// trusted through `ca_file` on one source and by its key's pin on the other.
#[test]
fn ftps_with_the_guides_certificates_on_proftpd_and_pure_ftpd() {
    for peer in [Peer::Proftpd, Peer::PureFtpd] {
        let certs = tempfile::tempdir().unwrap();
        let (cert, key, pin) = guide_certificate(certs.path());
        let server = Server::start(
            peer,
            Opts {
                tls: Some((cert.clone(), key)),
                ..Opts::default()
            },
        );
        let a = audio(&format!("tls {peer:?}"), 300_000);
        server.put("t.wav", &a);
        server.put("t.csv", one_row_csv("TLS-1", "t.wav").as_bytes());
        for trust in [
            format!("ca_file = {:?}", cert.to_str().unwrap()),
            format!("tls_pin_sha256 = [\"{pin}\"]"),
        ] {
            let mut d = daemon_for(&server, "ftps", &trust);
            d.start();
            assert_recordings(&d, &d.wait_forwarded(1, T)["TLS-1"], &[("t.wav", &a)]);
            let status = wait_good_polls(&d, 1);
            assert!(status["last_error"].is_null(), "{peer:?} {trust}: {status}");
        }
    }
}

/// A recording that changes on the server after its conversation was forwarded (a longer
/// file, as when the recorder paused past `min_age`): pulled again, the conversation is sent
/// again with the new bytes and reported `updated`, and it is not an orphan.
#[test]
fn a_recording_changed_after_it_was_forwarded_is_sent_again_as_updated() {
    for peer in ALL {
        let server = Server::start(peer, Opts::default());
        let short = audio(&format!("short {peer:?}"), 65_536);
        let whole = audio(&format!("whole {peer:?}"), 80_044);
        server.put("r.wav", &short);
        server.put("r.csv", one_row_csv("R-1", "r.wav").as_bytes());
        let mut d = daemon_for(&server, "ftp", "");
        d.start();
        assert_recordings(&d, &d.wait_forwarded(1, T)["R-1"], &[("r.wav", &short)]);
        server.put("r.wav", &whole);
        wait_for(&format!("{peer:?}: R-1 sent again"), T, || {
            d.forwarded()["R-1"]["recordings"][0]["bytes"] == whole.len()
        });
        assert_recordings(&d, &d.forwarded()["R-1"], &[("r.wav", &whole)]);
        wait_for(&format!("{peer:?}: reported updated"), T, || {
            d.read_report("acme", "r.csv.report.csv")
                .first()
                .is_some_and(|l| l[3] == "updated")
        });
        let orphans = d.read_report("acme", "orphans.csv");
        assert!(orphans.is_empty(), "{peer:?}: {orphans:?}");
    }
}

/// Extra connections whose logins are slow (here: not answered for an hour while another
/// session is logged in) are dropped once the files are in, so the next poll comes on time:
/// a second batch arrives long before the first poll's logins would have.
#[test]
fn extra_connections_still_logging_in_do_not_hold_the_poll() {
    let mut ftp = crate::ftp::FtpServer::new(&["--slow-logins", "3600"]);
    ftp.start();
    let a = audio("slow 1", 5_000);
    ftp.put("a.wav", &a);
    ftp.put("b.wav", b"b");
    ftp.put("a.csv", one_row_csv("A-1", "a.wav").as_bytes());
    let tenants = format!(
        "{ACME}[[tenants.ftp]]\nurl = \"ftp://calls@127.0.0.1:{}/\"\npassword_file = \"ftp.pass\"\n\
         poll_interval = \"300ms\"\nmin_age = \"0s\"\ntimeout = \"10m\"\nconnections = 4\n",
        ftp.port
    );
    let mut d = Daemon::new("1h", &tenants);
    std::fs::write(d.dir.path().join("ftp.pass"), "secret\n").unwrap();
    d.start();
    assert_recordings(&d, &d.wait_forwarded(1, T)["A-1"], &[("a.wav", &a)]);
    let c = audio("slow 2", 6_000);
    ftp.put("c.wav", &c);
    ftp.put("c.csv", one_row_csv("C-1", "c.wav").as_bytes());
    assert_recordings(&d, &d.wait_forwarded(2, T)["C-1"], &[("c.wav", &c)]);
}

/// vsftpd (anonymous, read-only, LIST in the Unix format, no MLSD), plain and with FTPS
/// required on control and data connections, from a private CA.
#[test]
fn vsftpd_plain_and_ftps_with_tls_session_reuse_required() {
    for tls in [false, true] {
        let certs = tempfile::tempdir().unwrap();
        let (ca, cert, key) = crate::ftp::certificates(certs.path());
        let server = Server::start(
            Peer::Vsftpd,
            Opts {
                tls: tls.then_some((cert, key)),
                ..Opts::default()
            },
        );
        let a = audio("vsftpd", 400_000);
        server.put("calls/v.wav", &a);
        server.put("calls/v.csv", one_row_csv("V-1", "v.wav").as_bytes());
        // The URL path is relative to the login folder (RFC 1738), here the anonymous root.
        let (scheme, trust) = if tls {
            ("ftps", format!("ca_file = {:?}", ca.to_str().unwrap()))
        } else {
            ("ftp", String::new())
        };
        let url = format!("{}calls", server.url(scheme));
        let mut d = crate::ftp::daemon_polling(&url, &trust);
        d.start();
        assert_recordings(&d, &d.wait_forwarded(1, T)["V-1"], &[("v.wav", &a)]);
    }
}
