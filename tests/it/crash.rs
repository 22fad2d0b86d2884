//! `kill -9` at arbitrary moments while 200 conversations are in flight; after a final restart
//! every conversation is forwarded exactly once, byte-identical, none half-written.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;

const CONVERSATIONS: usize = 200;
const BATCHES: usize = 4;

#[test]
fn kill_9_repeatedly_loses_nothing_and_duplicates_nothing() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let per_batch = CONVERSATIONS / BATCHES;
    let mut kills = 0;
    for b in 0..BATCHES {
        let mut csv = format!("{HEADER}\n");
        for i in 0..per_batch {
            let id = format!("K-{b}-{i:03}");
            let bytes = audio(&id, rng.usize(50_000..600_000));
            let name = format!("{id}.wav");
            // Some recordings are uploaded while the daemon is down, some while it runs.
            d.put("acme", &name, &bytes);
            csv.push_str(&csv_row(&id, &name));
            csv.push('\n');
            expected.insert(id, bytes);
            if rng.u8(..) < 8 {
                d.kill9();
                kills += 1;
                d.start();
            }
        }
        d.put("acme", &format!("batch-{b}.csv"), csv.as_bytes());
        // Let some forwarding start, then pull the plug mid-flight.
        std::thread::sleep(Duration::from_millis(rng.u64(20..250)));
        d.kill9();
        kills += 1;
        d.start();
    }
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.u64(30..300)));
        d.kill9();
        kills += 1;
        d.start();
    }
    assert!(kills >= 10, "only {kills} kills");

    assert_forwarded_once(&d, &expected, Duration::from_secs(180));
    wait_for("the drop folder to empty", Duration::from_secs(30), || {
        drop_files(&d, "acme").is_empty()
    });
    let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["tenants"]["acme"]["states"],
        serde_json::json!({"forwarded": CONVERSATIONS})
    );
    for b in 0..BATCHES {
        let lines = d.wait_report("acme", &format!("batch-{b}.csv.report.csv"), per_batch);
        assert!(lines.iter().all(|l| l[3] == "forwarded"), "batch {b}: {lines:?}");
    }
    assert_eq!(d.stop().code(), Some(0));
}

/// Waits for every conversation of `expected` (id -> the bytes of `{id}.wav`) to be forwarded,
/// each byte-identical, and checks nothing else is in the outbox: no stray keys, no partial
/// files outside the staging folder.
fn assert_forwarded_once(d: &Daemon, expected: &BTreeMap<String, Vec<u8>>, timeout: Duration) {
    let fwd = d.wait_forwarded(expected.len(), timeout);
    assert_eq!(fwd.len(), expected.len(), "some conversation is missing or extra");
    for (id, bytes) in expected {
        let doc = fwd.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_recordings(d, doc, &[(&format!("{id}.wav"), bytes)]);
    }
    let files: Vec<_> = walk(&d.outbox())
        .into_iter()
        .filter(|p| !p.strip_prefix(d.outbox()).unwrap().starts_with(".dropsync-tmp"))
        .collect();
    assert_eq!(
        files.len(),
        2 * expected.len(),
        "exactly one recording and one metadata.json each"
    );
}

/// What a crash right after an answered SFTP CLOSE leaves (the upload marked complete and
/// fsynced, its rename not yet on disk), and what a crash mid-upload leaves: at the next start
/// the first is put in place and forwarded, the second removed.
#[test]
fn uploads_left_by_a_crash_are_completed_or_removed_at_start() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    d.stop();
    let a = audio("after-close", 5_000);
    let drop_dir = d.drop_dir("acme");
    let closed = drop_dir.join(".dropsync-upload-00000000000000aa");
    std::fs::write(&closed, &a).unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os; os.setxattr({:?}, 'user.dropsync.final', b'x1.wav')",
            closed.to_str().unwrap()
        ))
        .output()
        .expect("python3 is missing");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cut = drop_dir.join(".dropsync-upload-00000000000000bb");
    std::fs::write(&cut, b"RIFF, then the connection went away").unwrap();
    d.put(
        "acme",
        "x.csv",
        format!("{HEADER}\n{}\n{}\n", csv_row("X-1", "x1.wav"), csv_row("X-2", "x2.wav")).as_bytes(),
    );
    d.start();
    let fwd = d.wait_forwarded(1, Duration::from_secs(60));
    assert_recordings(&d, &fwd["X-1"], &[("x1.wav", &a)]);
    assert!(!closed.exists() && !cut.exists());
    assert!(!drop_dir.join("x2.wav").exists());
}

/// Entries of the zip in the crash test: recordings of 8 to 24 KB. Enough of them that the
/// unpack outlasts the test's look at the log (every 20 ms) by far, so each kill lands mid-way.
const ZIP_ENTRIES: usize = 1500;

/// Starts `d` and kills it (`kill -9`) as soon as the log shows `line` once more than before.
fn kill_at(d: &mut Daemon, line: &str) {
    let before = d.log().matches(line).count();
    d.start_with_env(&[("RUST_LOG", "info,dropsync::arrival=debug")]);
    wait_for(&format!("{line:?} in the log"), Duration::from_secs(120), || {
        d.log().matches(line).count() > before
    });
    d.kill9();
}

/// `kill -9` while a zip is being unpacked: before any entry is synced, once they are synced
/// but not yet renamed into place, and once all are in place; after a final start every entry is recorded once and
/// forwarded intact, and no temp file is left.
#[test]
fn a_zip_unpacked_across_kill_9s_loses_and_duplicates_no_entry() {
    let mut d = Daemon::new("1h", ACME);
    let mut rng = fastrand::Rng::with_seed(0x21);
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut csv = format!("{HEADER}\n");
    let zip_path = d.dir.path().join("calls.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..ZIP_ENTRIES {
        let id = format!("Z-{i:04}");
        let bytes = audio(&id, rng.usize(8_000..24_000));
        w.start_file(format!("{id}.wav"), opts).unwrap();
        std::io::Write::write_all(&mut w, &bytes).unwrap();
        csv.push_str(&csv_row(&id, &format!("{id}.wav")));
        csv.push('\n');
        expected.insert(id, bytes);
    }
    w.start_file("calls.csv", opts).unwrap();
    std::io::Write::write_all(&mut w, csv.as_bytes()).unwrap();
    w.finish().unwrap();
    std::fs::create_dir_all(d.drop_dir("acme")).unwrap();
    std::fs::rename(&zip_path, d.drop_dir("acme").join("calls.zip")).unwrap();

    // Nothing synced yet; all synced, none renamed; all unpacked (perhaps not yet recorded).
    for line in ["unpacking zip batch", "arrivals synced", "zip batch unpacked"] {
        kill_at(&mut d, line);
    }
    let log = d.log();
    assert!(
        log.matches("zip batch unpacked").count() == 1,
        "a kill meant to land mid-unpack came after it"
    );
    d.start();
    assert_forwarded_once(&d, &expected, Duration::from_secs(300));
    wait_for("the drop folder to empty", Duration::from_secs(60), || {
        drop_files(&d, "acme").is_empty()
    });
    let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["tenants"]["acme"]["states"],
        serde_json::json!({"forwarded": ZIP_ENTRIES})
    );
    assert_eq!(d.stop().code(), Some(0));
}

/// Orphans in the purge test: a few sweeps' batches, so that the kill lands amid them.
const ORPHANS: usize = 2_500;

/// `kill -9` once local copies past retention begin to go: after a restart every one is gone
/// and recorded purged (no orphan left in the catalog), and nothing else was deleted.
#[test]
fn purges_cut_by_kill_9_are_finished_after_a_restart() {
    let mut d = Daemon::new("1s", ACME).with_replaced(
        "state_dir = \"var\"\n",
        "state_dir = \"var\"\n[retention]\nlocal = \"1s\"\n",
    );
    d.start();
    for i in 0..ORPHANS {
        d.put("acme", &format!("O-{i:04}.wav"), &audio(&format!("orphan {i}"), 1_000));
    }
    let orphans = |d: &Daemon| {
        let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
        status["tenants"]["acme"]["orphans"].as_i64().unwrap_or(0)
    };
    // A sweep removes a batch (1,000 at most), then records it: kill once removals have begun.
    wait_for("the first orphan to be deleted", Duration::from_secs(60), || {
        drop_files(&d, "acme").len() < ORPHANS
    });
    d.kill9();
    let left = drop_files(&d, "acme").len();
    d.start();
    wait_for(
        "every orphan to be deleted and recorded",
        Duration::from_secs(120),
        || drop_files(&d, "acme").is_empty() && orphans(&d) == 0,
    );
    // Recorded purged, not forgotten: a new upload is taken in, not confused with the old.
    d.put("acme", "O-0000.wav", &audio("new", 1_000));
    d.put("acme", "n.csv", one_row_csv("N-1", "O-0000.wav").as_bytes());
    let fwd = d.wait_forwarded(1, Duration::from_secs(60));
    assert_recordings(&d, &fwd["N-1"], &[("O-0000.wav", &audio("new", 1_000))]);
    assert!(left > 0, "the kill came after every orphan was deleted");
    assert_eq!(d.stop().code(), Some(0));
}
