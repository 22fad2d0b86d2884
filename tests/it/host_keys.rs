//! The SFTP server's host keys (SPEC §5): ed25519, ECDSA P-256 and RSA 3072 (rsa-sha2 only),
//! created on first start and kept, and what an operator sees when a client cannot agree on
//! an algorithm with dropsync.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::*;

/// `ssh-keygen -l` of a key file or of keys on stdin: `(type, SHA256 fingerprint, bits)` per key.
fn fingerprints(out: &Output) -> Vec<(String, String, u32)> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let kind = words.last()?.trim_matches(|c| c == '(' || c == ')').to_owned();
            Some((kind, words.get(1)?.to_string(), words.first()?.parse().ok()?))
        })
        .collect()
}

fn fingerprint_of_file(path: &Path) -> (String, String, u32) {
    let out = Command::new("ssh-keygen").arg("-lf").arg(path).output().unwrap();
    let mut all = fingerprints(&out);
    assert_eq!(all.len(), 1, "{}", path.display());
    all.remove(0)
}

/// The host keys the server on `port` offers, as `ssh-keyscan | ssh-keygen -lf -` shows them
/// (the README's command), sorted.
pub fn scanned(port: u16) -> Vec<(String, String, u32)> {
    let scan = Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "-t", "ed25519,ecdsa,rsa", "127.0.0.1"])
        .output()
        .expect("ssh-keyscan is missing: install openssh-client (./scripts/test does)");
    let mut keygen = Command::new("ssh-keygen")
        .args(["-lf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut keygen.stdin.take().unwrap(), &scan.stdout).unwrap();
    let mut all = fingerprints(&keygen.wait_with_output().unwrap());
    all.sort();
    all
}

/// Logs in as acme offering only the host key algorithm `alg`; whether `pwd` succeeded.
fn logs_in_with_host_key_algorithm(d: &Daemon, alg: &str) -> bool {
    Command::new("sftp")
        .args(["-b", "-"])
        .args(SSH_OPTS)
        .args(["-o", &format!("HostKeyAlgorithms={alg}"), "-i"])
        .arg(d.key("acme"))
        .args(["-P", &d.sftp_port.to_string(), "acme@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn ed25519_ecdsa_and_rsa_host_keys_are_created_kept_and_offered() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let var = d.dir.path().join("var");
    let mut on_disk = Vec::new();
    for (name, kind, bits) in [
        ("ssh_host_ed25519_key", "ED25519", 256),
        ("ssh_host_ecdsa_key", "ECDSA", 256),
        ("ssh_host_rsa_key", "RSA", 3072),
    ] {
        let path = var.join(name);
        assert!(path.is_file(), "{name} was not created");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{name}'s mode");
        let fp = fingerprint_of_file(&path);
        assert_eq!((fp.0.as_str(), fp.2), (kind, bits), "{name}");
        on_disk.push(fp);
    }
    on_disk.sort();
    // Nothing of the creation is left beside them (each written under a temp name, renamed).
    let mut names: Vec<String> = std::fs::read_dir(&var)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ssh_host") || n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_rsa_key"]
    );
    // The server offers exactly those.
    assert_eq!(scanned(d.sftp_port), on_disk);
    for alg in ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-256", "rsa-sha2-512"] {
        assert!(
            logs_in_with_host_key_algorithm(&d, alg),
            "no login with a {alg} host key"
        );
    }
    // RSA never signs with SHA-1.
    assert!(
        !logs_in_with_host_key_algorithm(&d, "ssh-rsa"),
        "an ssh-rsa (SHA-1) host key signature"
    );
    // Kept across restarts.
    d.stop();
    d.start();
    assert_eq!(scanned(d.sftp_port), on_disk);
}

#[test]
fn configured_host_keys_are_read_whatever_their_type_and_made_after_their_name() {
    let mut d = Daemon::with_sftp("host_keys = [\"keys/mine\", \"keys/new_ecdsa_key\"]");
    // An existing key under a name that says nothing of its type.
    std::fs::create_dir_all(d.dir.path().join("keys")).unwrap();
    let mine = d.dir.path().join("keys/mine");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&mine)
        .output()
        .unwrap();
    assert!(out.status.success());
    d.start();
    let mut want = vec![
        fingerprint_of_file(&mine),
        fingerprint_of_file(&d.dir.path().join("keys/new_ecdsa_key")),
    ];
    want.sort();
    assert_eq!(want[0].0, "ECDSA");
    assert_eq!(scanned(d.sftp_port), want);
    assert!(!d.dir.path().join("var/ssh_host_ed25519_key").exists());
    d.stop();
    // A key to create whose name does not say its type is a configuration error.
    let d = d.with_replaced("keys/new_ecdsa_key", "keys/other");
    let out = d.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sftp.host_keys.1"), "{err}");
    assert!(err.contains("name it after its type (ed25519, ecdsa or rsa)"), "{err}");
}

#[test]
fn the_old_host_key_setting_is_one_key() {
    let mut d = Daemon::with_sftp("host_key = \"var/ssh_host_ed25519_key\"");
    d.start();
    let fps = scanned(d.sftp_port);
    assert_eq!(fps.len(), 1, "{fps:?}");
    assert_eq!(fps[0].0, "ED25519");
}

/// The first INFO line of the daemon's log holding every one of `parts`.
fn info_line(d: &Daemon, parts: &[&str]) -> Option<String> {
    d.log()
        .lines()
        .find(|l| l.contains(" INFO ") && parts.iter().all(|p| l.contains(p)))
        .map(str::to_owned)
}

/// OpenSSH `sftp` as `user` with `key` and `options`, running `pwd`.
fn sftp_with(d: &Daemon, user: &str, key: &Path, options: &[&str]) -> Output {
    Command::new("sftp")
        .args(["-b", "-"])
        .args(SSH_OPTS)
        .args(options)
        .arg("-i")
        .arg(key)
        .args(["-P", &d.sftp_port.to_string(), &format!("{user}@127.0.0.1")])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn failed_handshakes_and_logins_are_logged_at_info_with_what_each_side_offered() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let t = std::time::Duration::from_secs(30);
    // A client that knows only DSA host keys, which dropsync does not have.
    assert!(
        !sftp_with(&d, "acme", &d.key("acme"), &["-o", "HostKeyAlgorithms=ssh-dss"])
            .status
            .success()
    );
    let want = [
        "ssh handshake failed: no common host key algorithm",
        "client offered ssh-dss;",
        "server offers ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256",
        "peer=127.0.0.1:",
    ];
    wait_for("the host key failure at INFO", t, || info_line(&d, &want).is_some());
    // One that knows only a key exchange dropsync does not do.
    let kex = "diffie-hellman-group1-sha1";
    assert!(
        !sftp_with(&d, "acme", &d.key("acme"), &["-o", &format!("KexAlgorithms={kex}")])
            .status
            .success()
    );
    let want = [
        "no common key exchange algorithm",
        &format!("client offered {kex}")[..],
        "server offers mlkem768x25519-sha256,curve25519-sha256,",
    ];
    wait_for("the key exchange failure at INFO", t, || info_line(&d, &want).is_some());
    // A login with a key that is not the tenant's.
    assert!(!sftp_with(&d, "acme", &d.key("beta"), &[]).status.success());
    let beta_fp = fingerprint_of_file(&d.key("beta")).1;
    let want = [
        "sftp login failed",
        "user=acme",
        "unknown user or key",
        &beta_fp[..],
        "peer=127.0.0.1:",
    ];
    wait_for("the failed login at INFO", t, || info_line(&d, &want).is_some());
    // The tenant's own key with a signature that does not verify (russh checks it without asking
    // the handler, after the handler accepted the key).
    let out = d.paramiko(
        "k = paramiko.Ed25519Key.from_private_key_file(KEY)\nsign = k.sign_ssh_data\n\
         k.sign_ssh_data = lambda data, algorithm=None: sign(b'not the session', algorithm)\n\
         t = paramiko.Transport(('127.0.0.1', PORT))\ntry:\n    t.connect(username='acme', pkey=k)\n    print('in')\n\
         except paramiko.AuthenticationException:\n    print('refused')\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acme_fp = fingerprint_of_file(&d.key("acme")).1;
    let want = [
        "sftp login failed",
        "user=acme",
        &acme_fp[..],
        "its signature did not verify",
    ];
    wait_for("the bad signature at INFO", t, || info_line(&d, &want).is_some());
    // beta is served meanwhile.
    let audio = d.beta_uploads("B-1");
    let forwarded = d.wait_forwarded(1, t);
    assert_recordings(&d, &forwarded["B-1"], &[("B-1.wav", &audio)]);
}
