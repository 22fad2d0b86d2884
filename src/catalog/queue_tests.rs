//! Tests of the catalog's work queues besides conversations: intake items, minute
//! allocations and tenants taken in turn.

use super::tests::{Fixture, GRACE, archive, fixture, fixture_pg, metadata, on_both_stores, row, sent};
use super::*;

fn queued(tenant: &str, rel: &str, heavy: bool, due: i64) -> NewIntake {
    NewIntake::file(tenant, rel, Via::Local, heavy, due)
}

on_both_stores! {
fn intake_items_come_light_first_heavy_alone_and_retry_later(fx: Fixture) {
    let now = 1_000;
    fx.cat
        .intake_queue()
        .enqueue_intake(
            &[
                queued("acme", "batch.csv", true, now),
                queued("acme", "c1.wav", false, now),
                queued("acme", "c2.wav", false, now),
                queued("beta", "b.wav", false, now + 500),
                NewIntake::scan("acme", String::new(), now),
            ],
            now,
        )
        .unwrap();
    let next = |after: &str, at: i64| fx.cat.intake_queue().next_intake_tenant(after, at).unwrap();
    assert_eq!(next("", now).as_deref(), Some("acme"));
    assert_eq!(next("acme", now), None);
    assert_eq!(next("acme", now + 500).as_deref(), Some("beta"));
    let names = |items: &[IntakeItem]| items.iter().map(|i| i.rel_path.clone()).collect::<Vec<_>>();
    // A scan goes first, alone; then the light items together; then the heavy one alone.
    let scan = fx.cat.intake_queue().claim_intake("acme", now, 10).unwrap();
    assert_eq!((scan.len(), scan[0].kind), (1, IntakeKind::Scan));
    fx.cat
        .intake_queue()
        .finish_intake(&[(scan[0].clone(), IntakeOutcome::Done)])
        .unwrap();
    let light = fx.cat.intake_queue().claim_intake("acme", now, 10).unwrap();
    assert_eq!(names(&light), ["c1.wav", "c2.wav"]);
    // A new event for c2 while it is being processed keeps it queued.
    fx.cat
        .intake_queue()
        .enqueue_intake(&[queued("acme", "c2.wav", false, now)], now)
        .unwrap();
    let done: Vec<_> = light.iter().map(|i| (i.clone(), IntakeOutcome::Done)).collect();
    fx.cat.intake_queue().finish_intake(&done).unwrap();
    assert_eq!(
        names(&fx.cat.intake_queue().claim_intake("acme", now, 10).unwrap()),
        ["c2.wav"]
    );
    let c2 = fx.cat.intake_queue().claim_intake("acme", now, 10).unwrap();
    fx.cat
        .intake_queue()
        .finish_intake(&[(c2[0].clone(), IntakeOutcome::Done)])
        .unwrap();
    let heavy = fx.cat.intake_queue().claim_intake("acme", now, 10).unwrap();
    assert_eq!(names(&heavy), ["batch.csv"]);
    // A failure: not due until its retry time, then due with the attempt counted.
    let retry = IntakeOutcome::Retry {
        error: "database is locked".into(),
        at: now + 2_000,
    };
    fx.cat
        .intake_queue()
        .finish_intake(&[(heavy[0].clone(), retry)])
        .unwrap();
    assert!(
        fx.cat
            .intake_queue()
            .claim_intake("acme", now + 1_999, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(fx.cat.intake_queue().next_intake_due().unwrap(), Some(now + 500));
    let again = fx.cat.intake_queue().claim_intake("acme", now + 2_000, 10).unwrap();
    assert_eq!((again[0].rel_path.as_str(), again[0].attempts), ("batch.csv", 1));
    let status = fx.cat.reports().status(Some("acme")).unwrap();
    assert_eq!(status.tenants["acme"].intake_queued, 1);
    assert_eq!(
        status.tenants["acme"].intake_last_error.as_deref(),
        Some("batch.csv: database is locked")
    );
}
}

/// A recording of `ms` milliseconds.
fn timed_recording(cat: &Catalog, rel: &str, ms: u64, now: i64) {
    let rel = crate::dropbox::RelPath::parse(rel).unwrap();
    let f = NewFile {
        tenant: "acme",
        rel: &rel,
        kind: crate::dropbox::FileKind::Recording,
        via: Via::Sftp,
        size: 10,
        mtime_ns: now,
        ino: now as u64,
        dev: 1,
        // Another duration is other bytes.
        sha256: Some(format!("{}-{ms}", rel.as_str())),
        duration_ms: Some(ms),
        audio_error: None,
    };
    cat.files().register_file(&f, now, "").unwrap();
}

fn allocation(minutes: Option<u64>, on_exceeded: crate::tenant::OnExceeded) -> Allocations {
    Allocations::from([(
        "acme".to_string(),
        AllocationNow {
            seconds: minutes.map(|m| m * 60),
            on_exceeded,
            month: "2026-11".into(),
        },
    )])
}

fn claimed_ids(cat: &Catalog, now: i64, a: &Allocations) -> Vec<String> {
    let work = cat.claim(now, 100, a).unwrap();
    for w in &work {
        cat.forward_queue()
            .complete(w.id, &sent(w), "dir", "k/", now, now)
            .unwrap();
    }
    work.into_iter().map(|w| w.conversation_id).collect()
}

/// One call per `(name, ms)`: `name.wav` of `ms`, and a row of `file` naming it (id: the name
/// in capitals). Returns the metadata file's id.
fn timed_calls(cat: &Catalog, file: &str, calls: &[(&str, u64)]) -> i64 {
    for (name, ms) in calls {
        timed_recording(cat, &format!("{name}.wav"), *ms, 1000);
    }
    let (_, m) = metadata(cat, file, 1000);
    let rows: Vec<RowInput> = calls
        .iter()
        .enumerate()
        .map(|(i, (n, _))| row(i as u64 + 2, &n.to_uppercase(), &[&format!("{n}.wav")], "x"))
        .collect();
    cat.files().add_rows(m, &rows, 1000, GRACE).unwrap();
    m
}

on_both_stores! {
/// Two minutes: 61 s and 50 s go (rounded up: 60.2 s counts 61), 30 s is held, and the 5 s one
/// after it waits behind it (arrival order); a raise releases both in order; a retry of a
/// charged conversation is not charged twice; with "reject", each is decided on its own.
fn a_minute_allocation_lets_through_what_fits_and_holds_the_rest_in_order(fx: Fixture) {
    use crate::tenant::OnExceeded;
    let cat = &fx.cat;
    let m = timed_calls(
        cat,
        "batch.csv",
        &[("a", 60_200), ("b", 50_000), ("c", 30_000), ("d", 5_000)],
    );
    let two = allocation(Some(2), OnExceeded::Hold);
    assert_eq!(claimed_ids(cat, 1001, &two), ["A", "B"]);
    let lines = cat.reports().report_lines(m).unwrap();
    assert_eq!((lines[2].status, lines[3].status), ("held", "held"));
    assert!(
        lines[2]
            .detail
            .contains("would pass the 2 minutes of 2026-11 (1:51 used)"),
        "{}",
        lines[2].detail
    );
    assert_eq!(cat.minutes().status(&two).unwrap()["acme"].seconds_used, 111);
    // Nothing fits yet, so nothing is released; three minutes fit both: 111 + 30 + 5 <= 180.
    assert_eq!(cat.minutes().release_held(&two, 1002).unwrap(), 0);
    let three = allocation(Some(3), OnExceeded::Hold);
    assert_eq!(cat.minutes().release_held(&three, 1003).unwrap(), 2);
    assert_eq!(claimed_ids(cat, 1004, &three), ["C", "D"]);
    assert_eq!(cat.minutes().status(&three).unwrap()["acme"].seconds_used, 146);
    // A new month starts from zero.
    let mut next = three.clone();
    next.get_mut("acme").unwrap().month = "2026-12".into();
    assert_eq!(cat.minutes().status(&next).unwrap()["acme"].seconds_used, 0);

    // "reject": e (40 s) passes two minutes of a fresh month on its own; f (10 s) still fits.
    let fx = fixture();
    let cat = &fx.cat;
    let m = timed_calls(cat, "b.csv", &[("e", 100_000), ("f", 40_000), ("g", 10_000)]);
    let reject = allocation(Some(2), OnExceeded::Reject);
    // Claimed but not completed, then recovered after a "crash": charged once.
    let work = cat.claim(1001, 100, &reject).unwrap();
    assert_eq!(
        work.iter().map(|w| w.conversation_id.as_str()).collect::<Vec<_>>(),
        ["E", "G"]
    );
    assert_eq!(cat.forward_queue().recover(1002).unwrap(), 2);
    assert_eq!(claimed_ids(cat, 1003, &reject), ["E", "G"]);
    assert_eq!(cat.minutes().status(&reject).unwrap()["acme"].seconds_used, 110);
    let lines = cat.reports().report_lines(m).unwrap();
    assert_eq!(lines[1].status, "rejected");
    assert!(
        lines[1].detail.starts_with("minute allocation exceeded"),
        "{}",
        lines[1].detail
    );
}
}

/// The report-change counter of metadata file `m`.
fn report_version(cat: &Catalog, m: i64) -> i64 {
    let stale = cat.reports().stale_reports(0, 100).unwrap();
    stale.iter().find(|s| s.metadata_file_id == m).map_or(0, |s| s.version)
}

on_both_stores! {
/// Five 35 s calls under one minute: one goes, four are held. Two minutes release the next two
/// only (105 s), and they are not held again behind the two that stay, which are not touched.
/// A new month releases what fits in it; seconds given back (a permanent failure) release more.
fn held_calls_are_released_as_far_as_they_fit_and_the_rest_is_left_alone(fx: Fixture) {
    use crate::tenant::OnExceeded;
    let cat = &fx.cat;
    let calls = ["a", "b", "c", "d", "e"].map(|n| (n, 35_000));
    let m = timed_calls(cat, "batch.csv", &calls);
    let one = allocation(Some(1), OnExceeded::Hold);
    assert_eq!(cat.minutes().release_held(&one, 1001).unwrap(), 0);
    assert_eq!(claimed_ids(cat, 1001, &one), ["A"]);
    let before = cat.reports().report_lines(m).unwrap();
    let statuses = |cat: &Catalog| -> Vec<&'static str> {
        cat.reports()
            .report_lines(m)
            .unwrap()
            .iter()
            .map(|l| l.status)
            .collect()
    };
    assert_eq!(statuses(cat), ["forwarded", "held", "held", "held", "held"]);

    let two = allocation(Some(2), OnExceeded::Hold);
    assert_eq!(cat.minutes().release_held(&two, 1002).unwrap(), 2);
    assert_eq!(claimed_ids(cat, 1003, &two), ["B", "C"]);
    assert_eq!(statuses(cat), ["forwarded", "forwarded", "forwarded", "held", "held"]);
    assert_eq!(cat.minutes().status(&two).unwrap()["acme"].seconds_used, 105);
    // The two that stay are not rewritten, however often the forwarders ask.
    let version = report_version(cat, m);
    for now in 1004..1010 {
        assert_eq!(cat.minutes().release_held(&two, now).unwrap(), 0);
        assert!(cat.claim(now, 100, &two).unwrap().is_empty());
    }
    assert_eq!(report_version(cat, m), version, "held rows were rewritten");
    assert_eq!(cat.reports().report_lines(m).unwrap()[3..], before[3..]);

    // A new month: one minute holds D (35 s), not E after it.
    let mut december = one.clone();
    december.get_mut("acme").unwrap().month = "2026-12".into();
    assert_eq!(cat.minutes().release_held(&december, 1010).unwrap(), 1);
    let work = cat.claim(1011, 100, &december).unwrap();
    assert_eq!(
        work.iter().map(|w| w.conversation_id.as_str()).collect::<Vec<_>>(),
        ["D"]
    );
    assert_eq!(cat.minutes().status(&december).unwrap()["acme"].seconds_used, 35);
    assert_eq!(cat.minutes().release_held(&december, 1012).unwrap(), 0);
    // D fails for good: its seconds come back, and E fits in them.
    cat.forward_queue().fail(work[0].id, "permission denied", 1013).unwrap();
    assert_eq!(cat.minutes().status(&december).unwrap()["acme"].seconds_used, 0);
    assert_eq!(cat.minutes().release_held(&december, 1014).unwrap(), 1);
    assert_eq!(claimed_ids(cat, 1015, &december), ["E"]);
}
}

/// Sends conversation R again in `file`, naming `rec` of `ms`; returns the metadata file's id.
fn resend_timed(cat: &Catalog, file: &str, rec: &str, ms: u64, now: i64) -> i64 {
    timed_recording(cat, rec, ms, now);
    let (_, m) = metadata(cat, file, now);
    cat.files()
        .add_rows(m, &[row(2, "R", &[rec], "x")], now, GRACE)
        .unwrap();
    m
}

on_both_stores! {
/// Each send of a conversation is charged the difference from what it was charged before: a
/// longer re-send the seconds it adds, a shorter one gives some back, a retry nothing, an FTP
/// revision sent again in the same row its difference too. A re-send that adds more than is
/// left is decided like a first send; one that fails for good gives back what it changed.
fn a_resend_is_charged_the_difference_from_what_was_charged_before(fx: Fixture) {
    use crate::tenant::OnExceeded;
    let cat = &fx.cat;
    let two = allocation(Some(2), OnExceeded::Reject);
    let used = |cat: &Catalog| cat.minutes().status(&two).unwrap()["acme"].seconds_used;
    resend_timed(cat, "r1.csv", "r1.wav", 10_000, 1000);
    assert_eq!(claimed_ids(cat, 1001, &two), ["R"]);
    assert_eq!(used(cat), 10);
    // 100 s: 90 more. A transient failure, then the retry: charged once.
    let m = resend_timed(cat, "r2.csv", "r2.wav", 99_100, 1002);
    let work = cat.claim(1003, 10, &two).unwrap();
    assert_eq!(used(cat), 100);
    cat.forward_queue()
        .retry_later(work[0].id, "timeout", 1004, 1003)
        .unwrap();
    assert_eq!(claimed_ids(cat, 1004, &two), ["R"]);
    assert_eq!(used(cat), 100);
    assert_eq!(cat.reports().report_lines(m).unwrap()[0].status, "updated");
    // 40 s: 60 back.
    resend_timed(cat, "r3.csv", "r3.wav", 40_000, 1005);
    assert_eq!(claimed_ids(cat, 1006, &two), ["R"]);
    assert_eq!(used(cat), 40);
    // r3.wav, pulled by FTP, changes on the server to 50 s: its row is sent again, +10.
    archive(cat, &cat.forward_queue().archive_candidates("acme").unwrap(), 1007);
    cat.ftp_state()
        .ftp_mark_partials("acme ftp://u@h:21/", "acme", &[], &[("r3.wav".into(), 10)], 1008)
        .unwrap();
    timed_recording(cat, "r3.wav", 50_000, 1009);
    assert_eq!(claimed_ids(cat, 1010, &two), ["R"]);
    assert_eq!(used(cat), 50);
    // 130 s adds 80 to 50 used: over two minutes, rejected with the reason; nothing charged.
    let m = resend_timed(cat, "r4.csv", "r4.wav", 130_000, 1011);
    assert!(claimed_ids(cat, 1012, &two).is_empty());
    let line = &cat.reports().report_lines(m).unwrap()[0];
    assert_eq!(line.status, "rejected");
    assert_eq!(
        line.detail,
        "minute allocation exceeded: this re-send (2:10, 1:20 more than the 0:50 counted before) \
         would pass the 2 minutes of 2026-11 (0:50 used)"
    );
    assert_eq!(used(cat), 50);
    // 70 s adds 20 and fits, but fails for good: the 20 come back.
    resend_timed(cat, "r5.csv", "r5.wav", 70_000, 1013);
    let work = cat.claim(1014, 10, &two).unwrap();
    assert_eq!(used(cat), 70);
    cat.forward_queue().fail(work[0].id, "permission denied", 1015).unwrap();
    assert_eq!(used(cat), 50);
}
}

on_both_stores! {
/// A shorter re-send gives back only what the month it is sent in has (a month never drops
/// below zero), and if it then fails for good it takes back only that: 100 s charged in
/// November, a 10 s re-send in December (30 s used there) gives back 30, not 90, and its
/// failure returns December to 30, not to 90.
fn a_failed_shorter_resend_takes_back_only_what_its_month_gave(fx: Fixture) {
    use crate::tenant::OnExceeded;
    let cat = &fx.cat;
    let november = allocation(Some(10), OnExceeded::Hold);
    let mut december = november.clone();
    december.get_mut("acme").unwrap().month = "2026-12".into();
    let used = |a: &Allocations| cat.minutes().status(a).unwrap()["acme"].seconds_used;
    resend_timed(cat, "r1.csv", "r1.wav", 100_000, 1000);
    assert_eq!(claimed_ids(cat, 1001, &november), ["R"]);
    assert_eq!(used(&november), 100);
    timed_calls(cat, "other.csv", &[("o", 30_000)]);
    assert_eq!(claimed_ids(cat, 1002, &december), ["O"]);
    assert_eq!(used(&december), 30);
    resend_timed(cat, "r2.csv", "r2.wav", 10_000, 1003);
    let work = cat.claim(1004, 10, &december).unwrap();
    assert_eq!(work.len(), 1);
    assert_eq!(used(&december), 0);
    cat.forward_queue().fail(work[0].id, "permission denied", 1005).unwrap();
    assert_eq!(used(&december), 30, "the failed re-send took back more than it gave");
    assert_eq!(used(&november), 100);
}
}

/// `tenant` sends calls `ids`, each with its recording, at `now`.
fn tenant_calls(cat: &Catalog, tenant: &str, ids: &[&str], now: i64) {
    let file = |rel: &str, kind| {
        let rel = crate::dropbox::RelPath::parse(rel).unwrap();
        let f = NewFile {
            tenant,
            rel: &rel,
            kind,
            via: Via::Sftp,
            size: 10,
            mtime_ns: now,
            ino: now as u64,
            dev: 1,
            sha256: Some(rel.as_str().into()),
            duration_ms: Some(1000),
            audio_error: None,
        };
        cat.files().register_file(&f, now, "").unwrap()
    };
    for id in ids {
        file(&format!("{id}.wav"), crate::dropbox::FileKind::Recording);
    }
    let kind = crate::dropbox::FileKind::Metadata(crate::matching::MetadataFormat::Csv);
    let Registered::Metadata { metadata_file_id, .. } = file(&format!("{tenant}.csv"), kind) else {
        panic!("not metadata")
    };
    let rows: Vec<RowInput> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| row(i as u64 + 2, id, &[&format!("{id}.wav")], "x"))
        .collect();
    cat.files().add_rows(metadata_file_id, &rows, now, GRACE).unwrap();
}

on_both_stores! {
/// Tenants with due conversations are claimed in turn after the one served last, in name
/// order and round again; one whose work is not due yet is passed over until it is.
fn tenants_are_claimed_in_turn(fx: Fixture) {
    let cat = &fx.cat;
    tenant_calls(cat, "acme", &["A1", "A2", "A3", "A4", "A5", "A6"], 1000);
    tenant_calls(cat, "beta", &["B1"], 1001);
    tenant_calls(cat, "gamma", &["G1"], 1002);
    let none = Allocations::new();
    let turn = |after: &str, now: i64| -> Option<(String, Vec<String>)> {
        let claimed = cat.forward_queue().claim_turn(after, now, 2, &none).unwrap();
        claimed.map(|(t, w)| (t, w.into_iter().map(|w| w.conversation_id).collect()))
    };
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(turn("", 2000), Some(("acme".into(), ids(&["A1", "A2"]))));
    assert_eq!(turn("acme", 2000), Some(("beta".into(), ids(&["B1"]))));
    let g1 = cat.forward_queue().claim_turn("beta", 2000, 2, &none).unwrap().unwrap();
    assert_eq!(g1.0, "gamma");
    cat.forward_queue()
        .retry_later(g1.1[0].id, "timeout", 5000, 2000)
        .unwrap();
    assert_eq!(turn("gamma", 2000), Some(("acme".into(), ids(&["A3", "A4"]))));
    // gamma is not due yet, beta has nothing: acme again.
    assert_eq!(turn("acme", 2000), Some(("acme".into(), ids(&["A5", "A6"]))));
    assert_eq!(turn("acme", 2000), None);
    assert_eq!(turn("acme", 5000), Some(("gamma".into(), ids(&["G1"]))));
}
}

/// The lookups every arrival and every archive pass make go through indexes: with `state IN
/// (…)` over partial indexes SQLite scans the whole files table, and an arrival would cost a
/// scan of every file ever received.
#[test]
fn arrival_and_archive_lookups_use_indexes() {
    let fx = fixture();
    let conn = fx.cat.lock();
    for sql in [files::SAME_FILE, queue::RECORDED_FILES, queue::UNSETTLED] {
        let params: Vec<i64> = vec![1; if sql.contains("?5") { 5 } else { 1 }];
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .all(|step| !step.starts_with("SCAN files") || step.contains("USING INDEX")),
            "{sql}: {plan:?}"
        );
    }
}
