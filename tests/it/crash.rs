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

    let fwd = d.wait_forwarded(CONVERSATIONS, Duration::from_secs(180));
    assert_eq!(fwd.len(), CONVERSATIONS, "some conversation is missing or extra");
    for (id, bytes) in &expected {
        let doc = fwd.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_recordings(&d, doc, &[(&format!("{id}.wav"), bytes)]);
    }
    // Nothing else in the outbox: no stray keys, no partial files outside the staging folder.
    let files: Vec<_> = walk(&d.outbox())
        .into_iter()
        .filter(|p| !p.strip_prefix(d.outbox()).unwrap().starts_with(".dropsync-tmp"))
        .collect();
    assert_eq!(
        files.len(),
        2 * CONVERSATIONS,
        "exactly one recording and one metadata.json each"
    );
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
    let closed = drop_dir.join(".dropsync-upload-00000000000000aa-x1.wav");
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
    let cut = drop_dir.join(".dropsync-upload-00000000000000bb-x2.wav");
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
