//! authorized_keys with their OpenSSH meaning (SPEC §8): `from=`, `expiry-time=`, options
//! dropsync cannot honour, RSA without SHA-1, and keys removed by a reload.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// Rewrites acme's public key file with `options` in front of the key.
fn with_options(d: &Daemon, options: &str) {
    let path = d.dir.path().join("acme_key.pub");
    let key = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{options} {key}")).unwrap();
}

fn can_log_in(d: &Daemon) -> bool {
    d.sftp_batch("acme", "acme", "pwd\n").status.success()
}

#[test]
fn from_and_expiry_time_decide_who_logs_in() {
    let mut d = Daemon::with_sftp("");
    with_options(&d, "from=\"10.99.99.99\"");
    d.start();
    assert!(!can_log_in(&d), "from=\"10.99.99.99\" let 127.0.0.1 in");
    assert!(d.log().contains("127.0.0.1 is not in the key's from= list"));
    // beta, with no options, is not affected.
    assert!(d.sftp_batch("beta", "beta", "pwd\n").status.success());
    d.stop();
    // A network that holds the peer, with a negation that does not.
    let key = std::fs::read_to_string(d.dir.path().join("acme_key.pub")).unwrap();
    let bare = key.split_once(' ').unwrap().1.to_owned();
    std::fs::write(
        d.dir.path().join("acme_key.pub"),
        format!("from=\"127.0.0.0/8,!10.0.0.0/8\",restrict {bare}"),
    )
    .unwrap();
    d.start();
    assert!(can_log_in(&d));
    d.stop();
    std::fs::write(
        d.dir.path().join("acme_key.pub"),
        format!("expiry-time=\"20200101\" {bare}"),
    )
    .unwrap();
    d.start();
    assert!(!can_log_in(&d), "an expired key logged in");
    assert!(d.log().contains("the key expired (expiry-time)"));
}

#[test]
fn options_dropsync_cannot_honour_are_config_errors_naming_the_key() {
    let d = Daemon::with_sftp("");
    with_options(&d, "command=\"/bin/sh\"");
    let out = d.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tenant acme: key 1 (SHA256:"), "{err}");
    assert!(err.contains("\"command=\\\"/bin/sh\\\"\" cannot be honoured"), "{err}");
}

#[test]
fn rsa_needs_2048_bits_and_sha2_signatures() {
    let mut d = Daemon::with_sftp("");
    let rsa = d.dir.path().join("rsa_key");
    let keygen = |bits: &str| {
        let _ = std::fs::remove_file(&rsa);
        let _ = std::fs::remove_file(rsa.with_extension("pub"));
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", bits, "-N", "", "-f"])
            .arg(&rsa)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::copy(rsa.with_extension("pub"), d.dir.path().join("acme_key.pub")).unwrap();
    };
    keygen("1024");
    let out = d.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an RSA key of 1024 bits; at least 2048 are needed"),
        "{err}"
    );
    keygen("2048");
    d.start();
    assert!(
        d.sftp_batch_with("acme", &rsa, "pwd\n").status.success(),
        "rsa-sha2 refused"
    );
    // The same key, made to sign with SHA-1.
    let out = Command::new("sftp")
        .args(["-b", "-"])
        .args(SSH_OPTS)
        .args(["-o", "PubkeyAcceptedAlgorithms=ssh-rsa", "-i"])
        .arg(&rsa)
        .args(["-P", &d.sftp_port.to_string(), "acme@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "an ssh-rsa (SHA-1) signature logged in");
}

#[test]
fn a_reload_that_removes_a_key_ends_its_sessions() {
    let mut d = Daemon::with_sftp("");
    d.start();
    // A session that lists its folder every 100 ms until the connection is taken away.
    let watch = "import time\nt, s = connect(USER, KEYFILE)\nprint('connected', flush=True)\n\
                 while True:\n    try:\n        s.listdir('.')\n        print('listed', flush=True)\n    except Exception:\n        print('ended', flush=True)\n        break\n\
                 \x20   time.sleep(0.1)\n";
    let acme = d.paramiko_background(&format!("USER, KEYFILE = 'acme', KEY\n{watch}"));
    let beta_key = d.key("beta").display().to_string();
    let beta = d.paramiko_background(&format!("USER, KEYFILE = 'beta', {beta_key:?}\n{watch}"));
    wait_for("both sessions", T, || {
        acme.line_seen("connected") && beta.line_seen("connected")
    });
    std::fs::write(d.dir.path().join("acme_key.pub"), "").unwrap();
    assert!(d.signal(libc::SIGHUP));
    wait_for("acme's session to end", T, || acme.line_seen("ended"));
    assert!(
        d.log()
            .contains("ending a session whose key or tenant a reload removed")
    );
    assert!(!can_log_in(&d));
    // beta's key did not change: its session goes on listing after acme's ended.
    let before = beta.count("listed");
    wait_for("beta's session to go on", T, || beta.count("listed") > before + 2);
    assert!(!beta.line_seen("ended"), "beta's session ended too");
    assert!(d.sftp_batch("beta", "beta", "pwd\n").status.success());
}
