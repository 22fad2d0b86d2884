//! Minute allocations (SPEC §9) on the real binary: what is held drains when there is room,
//! and every send is charged, re-sends included. "acme" has the allocation; "beta" (unlimited)
//! is served meanwhile.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::harness::*;

/// "acme" with `minute_allocation = minutes`, and "beta" with the default mapping.
fn daemon(minutes: u64) -> Daemon {
    let acme = ACME.replace(
        "id = \"acme\"",
        &format!("id = \"acme\"\nminute_allocation = {minutes}"),
    );
    Daemon::new("1h", &format!("{acme}\n[[tenants]]\nid = \"beta\"\n"))
}

/// Rewrites acme's allocation in the config and reloads it (SIGHUP).
fn reallocate(d: &Daemon, from: u64, to: u64) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let old = format!("minute_allocation = {from}");
    assert!(text.contains(&old), "{text}");
    std::fs::write(&d.config, text.replace(&old, &format!("minute_allocation = {to}"))).unwrap();
    assert!(d.signal(libc::SIGHUP));
}

/// beta sends `{id}.wav` and a one-row CSV naming it; waits for it to be forwarded and reported.
fn beta_forwarded(d: &Daemon, id: &str) {
    d.put("beta", &format!("{id}.wav"), &audio(id, 4_044));
    d.put(
        "beta",
        &format!("{id}.csv"),
        beta_csv(id, &format!("{id}.wav")).as_bytes(),
    );
    let lines = d.wait_report("beta", &format!("{id}.csv.report.csv"), 1);
    assert_eq!(lines[0][3], "forwarded", "{lines:?}");
    assert!(d.forwarded().contains_key(id));
}

fn statuses(lines: &[Vec<String>]) -> Vec<&str> {
    lines.iter().map(|l| l[3].as_str()).collect()
}

/// One minute, five 35 s calls: one goes, four are held. Raised to two minutes, the next two
/// go (35 + 35 + 35 = 105 s fit in 120) in arrival order, and the last two stay held: their
/// rows and the report are not rewritten again and again.
#[test]
fn a_raised_allocation_releases_held_calls_in_order_as_far_as_they_fit() {
    let mut d = daemon(1);
    d.start();
    let mut csv = format!("{HEADER}\n");
    for i in 1..=5 {
        // 35 s: 280,000 bytes of 8 kHz, 8-bit mono.
        d.put("acme", &format!("c{i}.wav"), &audio(&format!("c{i}"), 280_044));
        csv += &format!("{}\n", csv_row(&format!("C{i}"), &format!("c{i}.wav")));
    }
    d.put("acme", "batch.csv", csv.as_bytes());
    let held = d.wait_report("acme", "batch.csv.report.csv", 5);
    assert_eq!(
        statuses(&held),
        ["forwarded", "held", "held", "held", "held"],
        "{held:?}"
    );

    reallocate(&d, 1, 2);
    beta_forwarded(&d, "B-1");
    let report = "batch.csv.report.csv";
    wait_for(
        "C2 and C3 to be forwarded after the raise",
        Duration::from_secs(30),
        || statuses(&d.read_report("acme", report)) == ["forwarded", "forwarded", "forwarded", "held", "held"],
    );
    let fwd = d.forwarded();
    assert!(fwd.contains_key("C2") && fwd.contains_key("C3"), "{fwd:?}");
    assert!(!fwd.contains_key("C4") && !fwd.contains_key("C5"), "{fwd:?}");
    let written = std::fs::metadata(d.report("acme", report)).unwrap().ino();

    // A barrier: beta's next call went through the forwarders and the report writer since.
    beta_forwarded(&d, "B-2");
    let lines = d.read_report("acme", report);
    assert_eq!(lines[3..], held[3..], "C4 and C5 stay held as they were");
    assert_eq!(
        std::fs::metadata(d.report("acme", report)).unwrap().ino(),
        written,
        "acme's report was rewritten with nothing new in it"
    );
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["minutes"]["acme"]["seconds_used"], 105, "{v}");
    assert_eq!(d.forwarded().len(), 5, "C1, C2, C3, B-1, B-2");
}

/// acme's `seconds_used` this month, from `status --json`.
fn seconds_used(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["minutes"]["acme"]["seconds_used"].clone()
}

/// acme sends conversation R1 again in `{file}.csv`, naming `{file}.wav` of `secs` seconds;
/// returns its report line once decided.
fn resend(d: &Daemon, file: &str, secs: usize) -> Vec<String> {
    d.put("acme", &format!("{file}.wav"), &audio(file, 44 + secs * 8_000));
    d.put(
        "acme",
        &format!("{file}.csv"),
        one_row_csv("R1", &format!("{file}.wav")).as_bytes(),
    );
    d.wait_report("acme", &format!("{file}.csv.report.csv"), 1).remove(0)
}

/// A re-send is charged the difference in duration: 10 s, then 100 s (+90), then 40 s (-60
/// given back); one that adds more than the allocation has left is held like any other, with
/// the reason. beta is served meanwhile.
#[test]
fn a_resend_is_charged_the_difference_in_duration() {
    let mut d = daemon(2);
    d.start();
    assert_eq!(resend(&d, "r1", 10)[3], "forwarded");
    assert_eq!(seconds_used(&d), 10);
    let line = resend(&d, "r1-longer", 100);
    assert_eq!(line[3], "updated", "{line:?}");
    assert_eq!(d.forwarded()["R1"]["duration_ms"], 100_000);
    assert_eq!(seconds_used(&d), 100, "the re-send 90 s longer was not charged");
    beta_forwarded(&d, "B-1");
    let line = resend(&d, "r1-shorter", 40);
    assert_eq!(line[3], "updated", "{line:?}");
    assert_eq!(seconds_used(&d), 40, "the re-send 60 s shorter was not given back");
    // 130 s: 90 more than counted, and 40 + 90 passes 120.
    let line = resend(&d, "r1-long", 130);
    assert_eq!(line[3], "held", "{line:?}");
    assert!(line[4].contains("would pass the 2 minutes"), "{line:?}");
    beta_forwarded(&d, "B-2");
    assert_eq!(seconds_used(&d), 40);
    assert_eq!(d.forwarded()["R1"]["duration_ms"], 40_000);
}

/// A held call's recording replaced, while the daemon is down, by another file of the same
/// size and mtime (`cp -p`, `rsync -t`): when the call is released, what goes out is the new
/// file with its own digest, never the new bytes under the old file's digest.
#[test]
fn a_recording_replaced_by_a_file_of_the_same_size_and_mtime_is_not_sent_as_the_old_one() {
    let mut d = daemon(1);
    d.start();
    // 70 s: over the 1-minute allocation, so it is held.
    let old = audio("old", 560_044);
    d.put("acme", "c1.wav", &old);
    d.put("acme", "batch.csv", one_row_csv("C1", "c1.wav").as_bytes());
    assert_eq!(d.wait_report("acme", "batch.csv.report.csv", 1)[0][3], "held");
    d.stop();
    let path = d.drop_dir("acme").join("c1.wav");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut new = audio("new", 560_044);
    new[44..52].copy_from_slice(b"replaced");
    assert_eq!(new.len(), old.len());
    let tmp = d.drop_dir("acme").join(".c1.wav.new");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace("minute_allocation = 1", "minute_allocation = 10"),
    )
    .unwrap();
    // Intake's rescan of acme fails, so only the forward can notice the change: it must not
    // send the new bytes under the old file's digest. It takes the file again, and what goes
    // out is the new file with its own digest, without a restart.
    d.start_with_env(&[("DROPSYNC_INJECT_PANIC", "scan:acme")]);
    beta_forwarded(&d, "B1");
    let fwd = d.wait_forwarded(2, Duration::from_secs(60));
    assert!(d.log().contains("c1.wav changed after it arrived"), "{}", d.log());
    assert_recordings(&d, &fwd["C1"], &[("c1.wav", &new)]);
}

/// A recording whose times alone change after intake recorded it (a client's SETSTAT after
/// CLOSE, `touch`) sends no arrival event. When its held call is released, the forward finds
/// the file changed: intake takes it again, and the call goes out without a restart.
#[test]
fn a_recording_touched_after_intake_is_taken_again_and_forwarded() {
    let mut d = daemon(1);
    d.start();
    let bytes = audio("touched", 560_044);
    d.put("acme", "c1.wav", &bytes);
    d.put("acme", "batch.csv", one_row_csv("C1", "c1.wav").as_bytes());
    assert_eq!(d.wait_report("acme", "batch.csv.report.csv", 1)[0][3], "held");
    let path = d.drop_dir("acme").join("c1.wav");
    let later = std::fs::metadata(&path).unwrap().modified().unwrap() + Duration::from_secs(3600);
    std::fs::File::open(&path).unwrap().set_modified(later).unwrap();
    reallocate(&d, 1, 10);
    let fwd = d.wait_forwarded(1, Duration::from_secs(60));
    assert_recordings(&d, &fwd["C1"], &[("c1.wav", &bytes)]);
    beta_forwarded(&d, "B1");
}
