//! The pipeline end to end on the real binary: drop folder in, dir sink out.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn audio_then_csv_is_forwarded_and_leaves_the_drop_folder() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let a1 = audio("c1", 5000);
    let a2 = encoded("c1b", "mp3", 300);
    d.put("acme", "c1.wav", &a1);
    d.put("acme", "c1b.mp3", &a2);
    d.put(
        "acme",
        "batch.csv",
        format!("{HEADER},Queue\n{},sales\n", csv_row("C-1", "c1.wav;c1b.mp3")).as_bytes(),
    );
    let fwd = d.wait_forwarded(1, T);
    let doc = &fwd["C-1"];
    assert_eq!(doc["tenant"], "acme");
    assert_eq!(doc["agent"], "agent-C-1@acme.example");
    assert_eq!(doc["contact_time"], "2019-05-03T09:27:23Z");
    assert_eq!(doc["fields"]["Queue"], "sales");
    assert_eq!(doc["source"]["metadata_file"], "batch.csv");
    assert_eq!(doc["source"]["row"], 2);
    assert_eq!(doc["source"]["via"], "local");
    assert_recordings(&d, doc, &[("c1.wav", &a1), ("c1b.mp3", &a2)]);
    assert_eq!(doc["recordings"][0]["key"], "acme/2019/05/03/C-1/c1.wav");
    assert!(d.outbox().join("acme/2019/05/03/C-1/metadata.json").is_file());
    assert_eq!(
        d.wait_report("acme", "batch.csv.report.csv", 1)[0],
        ["2", "C-1", "c1.wav;c1b.mp3", "forwarded", ""]
    );
    wait_for("files to leave the drop folder", T, || {
        drop_files(&d, "acme").is_empty()
    });
    let status = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["tenants"]["acme"]["states"]["forwarded"], 1);
}

#[test]
fn csv_then_audio_waits_for_the_recording() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    d.put(
        "acme",
        "calls/batch.csv",
        format!("{HEADER}\n{}\n{}\n", csv_row("C-1", "c1.wav"), csv_row("C-2", "c2.wav")).as_bytes(),
    );
    wait_for("the rows to be waiting", T, || {
        d.read_report("acme", "calls/batch.csv.report.csv")
            .iter()
            .filter(|l| l[3] == "waiting")
            .count()
            == 2
    });
    // The same name in another folder does not complete it (same-directory rule).
    d.put("acme", "c1.wav", &audio("wrong", 60));
    let a1 = audio("c1", 2000);
    d.put("acme", "calls/c1.wav", &a1);
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["C-1"], &[("c1.wav", &a1)]);
    let lines = d.read_report("acme", "calls/batch.csv.report.csv");
    assert_eq!(lines[1][3], "waiting");
    assert_eq!(d.forwarded().len(), 1);
}

#[test]
fn temp_names_are_ingested_only_once_renamed() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    d.put("acme", "batch.csv", one_row_csv("C-1", "c1.wav").as_bytes());
    let a1 = audio("c1", 4000);
    d.put("acme", "c1.wav.filepart", &a1[..1000]);
    d.put("acme", ".c1.wav.uploading", &a1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.forwarded().is_empty(), "a temp name was ingested");
    let tmp = d.drop_dir("acme").join("c1.wav.filepart");
    let mut f = std::fs::OpenOptions::new().append(true).open(&tmp).unwrap();
    f.write_all(&a1[1000..]).unwrap();
    drop(f);
    std::fs::rename(&tmp, d.drop_dir("acme").join("c1.wav")).unwrap();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["C-1"], &[("c1.wav", &a1)]);
}

#[test]
fn zip_batch_is_unpacked_and_hostile_entries_are_refused() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let (a1, a2) = (audio("z1", 3000), audio("z2", 100));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in [
        ("z1.wav", a1.as_slice()),
        ("z2.wav", a2.as_slice()),
        (
            "batch.csv",
            format!("{HEADER}\n{}\n{}\n", csv_row("Z-1", "z1.wav"), csv_row("Z-2", "z2.wav")).as_bytes(),
        ),
        ("../escape.wav", b"x".as_slice()),
    ] {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    d.put("acme", "in/batch.zip", &bytes);
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["Z-1"], &[("z1.wav", &a1)]);
    assert_recordings(&d, &fwd["Z-2"], &[("z2.wav", &a2)]);
    assert_eq!(fwd["Z-1"]["source"]["metadata_file"], "in/batch.csv");
    let zip_report = d.wait_report("acme", "in/batch.zip.report.csv", 1);
    assert_eq!(zip_report[0][2], "../escape.wav");
    assert_eq!(zip_report[0][3], "rejected");
    assert!(!d.dir.path().join("var/drop/acme/escape.wav").exists());
    assert!(!d.dir.path().join("var/drop/escape.wav").exists());
    wait_for("the batch to leave the drop folder", T, || {
        drop_files(&d, "acme").is_empty()
    });
}

#[test]
fn sidecar_files_name_their_recording_by_stem() {
    let tenants = r#"
[[tenants]]
id = "acme"
[tenants.mapping]
agent = "agent"
contact_date = "date"
contact_clock = "time"
"#;
    let mut d = Daemon::new("1h", tenants);
    d.start();
    let a1 = encoded("s1", "ogg", 1000);
    d.put("acme", "call-17.ogg", &a1);
    d.put(
        "acme",
        "call-17.json",
        br#"[{"agent": "ann", "date": "2020-01-31", "time": "23:59:59", "score": 4}]"#,
    );
    d.put("acme", "call-18.csv", b"agent,date,time\nbob,2020-02-01,08:00:00\n");
    let a2 = audio("s2", 1000);
    d.put("acme", "call-18.WAV", &a2);
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["call-17"], &[("call-17.ogg", &a1)]);
    assert_eq!(fwd["call-17"]["fields"]["score"], "4");
    assert_eq!(fwd["call-17"]["contact_time"], "2020-01-31T23:59:59Z");
    assert_recordings(&d, &fwd["call-18"], &[("call-18.WAV", &a2)]);
}

#[test]
fn tsv_and_json_lines_with_bom_and_crlf() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let (a1, a2) = (encoded("t1", "flac", 100), encoded("t2", "opus", 100));
    d.put("acme", "t1.flac", &a1);
    d.put("acme", "t2.opus", &a2);
    d.put(
        "acme",
        "b.tsv",
        b"\xEF\xBB\xBFContact Reference\tAgent Email\tContact Date\tAudio Filename\r\nT-1\ta@x\t2019-05-03T09:27:23+02:00\tt1.flac\r\n",
    );
    d.put(
        "acme",
        "b.jsonl",
        b"{\"Contact Reference\":\"T-2\",\"Agent Email\":\"b@x\",\"Contact Date\":\"2019-05-03T09:27:23Z\",\"Audio Filename\":\"t2.opus\"}\n",
    );
    let fwd = d.wait_forwarded(2, T);
    assert_eq!(fwd["T-1"]["contact_time"], "2019-05-03T07:27:23Z");
    assert_recordings(&d, &fwd["T-1"], &[("t1.flac", &a1)]);
    assert_recordings(&d, &fwd["T-2"], &[("t2.opus", &a2)]);
}

#[test]
fn bad_rows_and_bad_files_are_reported_and_the_daemon_stays_up() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    d.put("acme", "ok.wav", &audio("ok", 100));
    let csv = format!(
        "{HEADER}\n{}\nB-1,,2019-05-03T09:27:23Z,b1.wav\nB-2,a@x,not a date,b2.wav\nB-3,a@x,2019-05-03T09:27:23Z,b3.exe\n{}\nB-4,a@x\n",
        csv_row("OK-1", "ok.wav"),
        csv_row("OK-1", "ok2.wav"),
    );
    d.put("acme", "mixed.csv", csv.as_bytes());
    d.put(
        "acme",
        "latin1.csv",
        b"Contact Reference,Agent Email,Contact Date,Audio Filename\nX,J\xe9r\xf4me,2019-05-03T09:27:23Z,x.wav\n",
    );
    d.put("acme", "nocols.csv", b"id,who\n1,2\n");
    d.put("acme", "broken.json", b"[{\"a\": 1},");
    d.put("acme", "notes.txt", b"hello");
    d.put("acme", "bomb.zip", b"PK\x03\x04 not really");

    let lines = d.wait_report("acme", "mixed.csv.report.csv", 6);
    let status: Vec<&str> = lines.iter().map(|l| l[3].as_str()).collect();
    assert_eq!(
        status,
        ["forwarded", "rejected", "rejected", "rejected", "rejected", "rejected"]
    );
    assert!(lines[1][4].contains("agent"), "{:?}", lines[1]);
    assert!(lines[2][4].contains("not an ISO 8601"), "{:?}", lines[2]);
    assert!(
        lines[3][4].contains("\"exe\" is not a recording extension"),
        "{:?}",
        lines[3]
    );
    assert!(lines[4][4].contains("already used by row 2"), "{:?}", lines[4]);
    assert!(lines[5][4].contains("has 2 fields"), "{:?}", lines[5]);

    for (file, why) in [
        ("latin1.csv", "not UTF-8"),
        ("nocols.csv", "missing columns \"Contact Reference\", \"Agent Email\""),
        ("broken.json", "not valid JSON"),
        ("notes.txt", "not a recording"),
        ("bomb.zip", "not a readable zip"),
    ] {
        let lines = d.wait_report("acme", &format!("{file}.report.csv"), 1);
        assert_eq!(lines[0][3], "rejected", "{file}");
        assert_eq!(lines[0][0], "", "{file}: a whole-file rejection has no row number");
        assert!(lines[0][4].contains(why), "{file}: {:?}", lines[0]);
    }
    assert!(d.is_running(), "the daemon must survive bad input");
    // And it still works.
    let a = audio("after", 100);
    d.put("acme", "after.wav", &a);
    d.put("acme", "after.csv", one_row_csv("AFTER", "after.wav").as_bytes());
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["AFTER"], &[("after.wav", &a)]);
}

#[test]
fn files_present_before_start_up_are_ingested() {
    let mut d = Daemon::new("1h", ACME);
    let a1 = audio("pre", 700);
    d.put("acme", "sub/pre.wav", &a1);
    d.put("acme", "sub/pre.csv", one_row_csv("PRE", "pre.wav").as_bytes());
    d.start();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["PRE"], &[("pre.wav", &a1)]);
}

#[test]
fn resend_identical_is_a_no_op_and_changed_is_an_update() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let a1 = audio("r1", 900);
    d.put("acme", "c1.wav", &a1);
    d.put("acme", "b1.csv", one_row_csv("R-1", "c1.wav").as_bytes());
    let first = d.wait_forwarded(1, T)["R-1"].clone();
    wait_for("the first send to leave", T, || drop_files(&d, "acme").is_empty());

    // The same again: nothing new is written.
    d.put("acme", "c1.wav", &a1);
    d.put("acme", "b2.csv", one_row_csv("R-1", "c1.wav").as_bytes());
    let lines = d.wait_report("acme", "b2.csv.report.csv", 1);
    assert_eq!(lines[0][3], "forwarded");
    assert!(lines[0][4].contains("identical"), "{:?}", lines[0]);
    assert_eq!(
        d.forwarded()["R-1"]["forwarded_at"],
        first["forwarded_at"],
        "an identical re-send must not rewrite"
    );
    wait_for("the duplicate to leave", T, || drop_files(&d, "acme").is_empty());

    // Changed audio: forwarded again over the same keys, reported as updated.
    let a2 = audio("r1-v2", 950);
    d.put("acme", "c1.wav", &a2);
    d.put("acme", "b3.csv", one_row_csv("R-1", "c1.wav").as_bytes());
    let lines = d.wait_report("acme", "b3.csv.report.csv", 1);
    assert_eq!(lines[0][3], "updated");
    let fwd = d.forwarded();
    assert_eq!(fwd.len(), 1);
    assert_recordings(&d, &fwd["R-1"], &[("c1.wav", &a2)]);
}

/// A recording sent again the moment it leaves the drop folder, while the rest of its
/// conversation is still being moved to the archive, is a new file: matched by the next row,
/// not archived in the old one's place. (Before files were claimed for the archive first, the
/// re-sent file's record was marked archived with the old one, and the next row waited for good.)
#[test]
fn a_recording_resent_the_moment_it_leaves_is_a_new_file() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    // Four hundred recordings in one conversation: moving them takes long enough to send one again.
    let names: Vec<String> = (0..400).map(|i| format!("r{i:03}.wav")).collect();
    let audios: Vec<Vec<u8>> = (0..400).map(|i| audio(&format!("r{i}"), 300)).collect();
    for (name, a) in names.iter().zip(&audios) {
        d.put("acme", name, a);
    }
    d.put("acme", "b0.csv", one_row_csv("R-0", &names.join(";")).as_bytes());
    let deadline = Instant::now() + T;
    let first_gone = loop {
        if let Some(i) = names.iter().position(|n| !d.drop_dir("acme").join(n).exists()) {
            break i;
        }
        assert!(Instant::now() < deadline, "no recording left the drop folder");
        std::thread::sleep(Duration::from_millis(1));
    };
    d.put("acme", &names[first_gone], &audios[first_gone]);
    // A copy keeps its own mtime (as `cp -p` or `sftp put -p` would), so it is not taken for a
    // repeated event of the first.
    let copy = std::fs::File::options()
        .write(true)
        .open(d.drop_dir("acme").join(&names[first_gone]))
        .unwrap();
    copy.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000))
        .unwrap();
    drop(copy);
    // The next row once the whole first conversation is in the archive (its move recorded).
    let archive = d.dir.path().join("var/archive");
    wait_for("the first conversation in the archive", T, || {
        walk(&archive).len() == 401
    });
    d.put("acme", "b1.csv", one_row_csv("R-1", &names[first_gone]).as_bytes());
    let lines = d.wait_report("acme", "b1.csv.report.csv", 1);
    assert_eq!(lines[0][3], "forwarded", "{:?}", lines[0]);
    assert_recordings(
        &d,
        &d.forwarded()["R-1"],
        &[(names[first_gone].as_str(), &audios[first_gone])],
    );
}

#[test]
fn grace_expires_rows_and_reports_orphans_and_retry_requeues() {
    let mut d = Daemon::new("1s", ACME);
    d.start();
    d.put("acme", "stray.wav", &audio("stray", 60));
    d.put("acme", "b.csv", one_row_csv("E-1", "e1.wav").as_bytes());
    let lines = d.wait_report("acme", "b.csv.report.csv", 1);
    assert_eq!(lines[0][3], "expired");
    assert!(lines[0][4].contains("e1.wav"), "{:?}", lines[0]);
    // `retry` gives an expired row another grace period.
    let out = d.cli(&["retry", "--tenant", "acme", "--conversation", "E-1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "re-queued 1 conversation(s)"
    );
    let list: serde_json::Value = serde_json::from_slice(&d.cli(&["conversations", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["state"], "waiting");
    wait_for("it to expire again", T, || {
        d.read_report("acme", "b.csv.report.csv")[0][3] == "expired"
    });
    wait_for("orphans.csv", T, || d.read_report("acme", "orphans.csv").len() == 1);
    assert_eq!(d.read_report("acme", "orphans.csv")[0][0], "stray.wav");
    // Nothing is deleted before retention.
    assert!(d.drop_dir("acme").join("stray.wav").exists());
    // The recording turns up late: the expired row is still forwarded.
    let a = audio("e1", 60);
    d.put("acme", "e1.wav", &a);
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["E-1"], &[("e1.wav", &a)]);
}

#[test]
fn check_config_reports_every_problem_with_exit_2() {
    let d = Daemon::new("1h", ACME);
    let ok = d.cli(&["check-config"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(
        &d.config,
        "stat_dir = \"x\"\n[sink]\ntype = \"ftp\"\n[[tenants]]\nid = \"Nope\"\n",
    )
    .unwrap();
    let bad = d.cli(&["check-config"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    for want in [
        "stat_dir: unknown key",
        "sink.type: \"ftp\" is not one of",
        "tenants.0.id",
        "dropsync.toml",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A `reports` folder that another local writer replaced with a link gets no report written
/// through it (the report would land wherever the link points); the report is retried, and
/// written once the folder is a folder again.
#[test]
fn reports_are_never_written_through_a_link() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let elsewhere = d.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let reports = d.drop_dir("acme").join("reports");
    std::fs::remove_dir_all(&reports).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &reports).unwrap();
    let a = audio("rl", 800);
    d.put("acme", "rl.wav", &a);
    d.put("acme", "rl.csv", one_row_csv("RL-1", "rl.wav").as_bytes());
    assert_recordings(&d, &d.wait_forwarded(1, T)["RL-1"], &[("rl.wav", &a)]);
    wait_for("the report to be refused", T, || {
        d.log().contains("cannot write report")
    });
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "a report went through the link"
    );
    std::fs::remove_file(&reports).unwrap();
    let lines = d.wait_report("acme", "rl.csv.report.csv", 1);
    assert_eq!(lines[0][3], "forwarded");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// An id of 84 CJK characters is 252 bytes, valid, and 756 bytes percent-encoded; a recording
/// name may have 255 bytes. Both reach the sink (shortened the same way every time) instead of
/// waiting forever on "File name too long"; metadata.json keeps the originals. The tenant's
/// other call, sent after it, is forwarded too.
#[test]
fn the_longest_names_a_tenant_may_use_are_forwarded() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    let id = "話".repeat(84);
    let name = format!("{}.wav", "r".repeat(251));
    let (a1, a2) = (audio("long", 3000), audio("short", 2000));
    d.put("acme", &name, &a1);
    d.put("acme", "long.csv", one_row_csv(&id, &name).as_bytes());
    d.put("acme", "c2.wav", &a2);
    d.put("acme", "later.csv", one_row_csv("C-2", "c2.wav").as_bytes());
    let fwd = d.wait_forwarded(2, T);
    let doc = &fwd[&id];
    assert_eq!(doc["conversation_id"], id.as_str());
    assert_recordings(&d, doc, &[(&name, &a1)]);
    let key = doc["recordings"][0]["key"].as_str().unwrap();
    let segments: Vec<&str> = key.split('/').collect();
    assert!(
        segments[4].starts_with("%E8%A9%B1") && segments[4].len() <= 255,
        "{key}"
    );
    assert_eq!(segments[5], name);
    assert_eq!(d.wait_report("acme", "long.csv.report.csv", 1)[0][3], "forwarded");
    assert_recordings(&d, &fwd["C-2"], &[("c2.wav", &a2)]);
}

/// Past `retention.catalog` the catalog forgets a batch whose file and rows all ended (so that
/// what `status` and `/metrics` read does not grow with history), and keeps counting it; work
/// still open is kept whatever its age.
#[test]
fn history_past_retention_is_forgotten_and_still_counted() {
    let tenants = format!("[retention]\nlocal = \"1s\"\ncatalog = \"2s\"\n{ACME}");
    let mut d = Daemon::new("1h", &tenants);
    d.start();
    d.put("acme", "w.csv", one_row_csv("W-1", "never.wav").as_bytes());
    d.put("acme", "c1.wav", &audio("c1", 2000));
    d.put("acme", "b.csv", one_row_csv("C-1", "c1.wav").as_bytes());
    d.wait_forwarded(1, T);
    wait_for("the catalog to forget the forwarded batch", T, || {
        d.log().contains("catalog forgot history past retention.catalog")
    });
    let list: serde_json::Value = serde_json::from_slice(&d.cli(&["conversations", "--json"]).stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["W-1"], "{list}");
    let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["tenants"]["acme"]["states"]["forwarded"], 1, "{status}");
    assert_eq!(status["tenants"]["acme"]["states"]["waiting"], 1, "{status}");
    // The waiting row's batch is still there: its report is still kept up to date.
    assert_eq!(d.read_report("acme", "w.csv.report.csv")[0][3], "waiting");
}
