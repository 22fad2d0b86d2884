//! Catalog tests on a real SQLite file and on a real PostgreSQL database, each with its
//! migrations applied: a test written with [`on_both_stores!`] runs on each.

use chrono::{DateTime, Utc};

pub(super) use super::fixture::{Fixture, GRACE, fixture, fixture_pg, on_both_stores};
use super::sql::params;
use super::*;
use crate::dropbox::{FileKind, RelPath};
use crate::matching::{MetadataFormat, RecordingRef, RowVerdict, Submission};

pub(super) fn arrive(cat: &Catalog, rel: &str, kind: FileKind, size: u64, sha: &str, now: i64) -> Registered {
    let rel = RelPath::parse(rel).unwrap();
    let f = NewFile {
        tenant: "acme",
        rel: &rel,
        kind,
        via: Via::Sftp,
        size,
        mtime_ns: now,
        ino: now as u64,
        dev: 1,
        sha256: (kind == FileKind::Recording).then(|| sha.to_string()),
        duration_ms: (kind == FileKind::Recording).then_some(1000),
        audio_error: None,
    };
    cat.files().register_file(&f, now, "unknown kind").unwrap()
}

pub(super) fn recording(cat: &Catalog, rel: &str, sha: &str, now: i64) -> i64 {
    match arrive(cat, rel, FileKind::Recording, 10, sha, now) {
        Registered::Recording { file_id, .. } => file_id,
        other => panic!("{other:?}"),
    }
}

pub(super) fn metadata(cat: &Catalog, rel: &str, now: i64) -> (i64, i64) {
    match arrive(cat, rel, FileKind::Metadata(MetadataFormat::Csv), 100, "", now) {
        Registered::Metadata {
            file_id,
            metadata_file_id,
        } => (file_id, metadata_file_id),
        other => panic!("{other:?}"),
    }
}

pub(super) fn row(row_no: u64, id: &str, recordings: &[&str], agent: &str) -> RowInput {
    RowInput {
        row_no,
        verdict: RowVerdict::Accepted(Submission {
            conversation_id: id.into(),
            agent: agent.into(),
            contact_time: DateTime::parse_from_rfc3339("2019-05-03T09:27:23Z")
                .unwrap()
                .with_timezone(&Utc),
            recordings: recordings.iter().map(|r| RecordingRef::Exact(r.to_string())).collect(),
            fields: vec![("id".into(), id.into()), ("agent".into(), agent.into())],
        }),
    }
}

pub(super) fn states(cat: &Catalog) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = cat
        .reports()
        .conversations(Some("acme"), None, 100)
        .unwrap()
        .into_iter()
        .map(|c| (c.conversation_id.unwrap_or_default(), c.state))
        .collect();
    v.sort();
    v
}

/// Claims those of `ids` that may leave, bound for `/archive/{id}`.
fn claim(cat: &Catalog, ids: &[i64], now: i64) -> Vec<ToArchive> {
    cat.forward_queue()
        .claim_for_archive(ids, now, &|_, id, _| format!("/archive/{id}"))
        .unwrap()
}

/// Claims and archives those of `ids` that may leave; returns their ids.
pub(super) fn archive(cat: &Catalog, ids: &[i64], now: i64) -> Vec<i64> {
    let moved: Vec<(i64, Departure)> = claim(cat, ids, now)
        .iter()
        .map(|a| (a.file_id, Departure::Archived))
        .collect();
    cat.forward_queue().settle_departures(&moved, now).unwrap();
    moved.into_iter().map(|(id, _)| id).collect()
}

fn file_state(cat: &Catalog, id: i64) -> String {
    cat.sql(|c| c.query_row("SELECT state FROM files WHERE id = ?1", params![id], |r| r.get(0)))
}

impl Catalog {
    /// The first tenant in turn's due conversations (see [`Catalog::claim_turn`]): the tests'
    /// claim, most of them having one tenant.
    pub(super) fn claim(&self, now: i64, limit: usize, allocations: &Allocations) -> Result<Vec<Work>> {
        Ok(self
            .forward_queue()
            .claim_turn("", now, limit, allocations)?
            .map(|(_, w)| w)
            .unwrap_or_default())
    }
}

pub(super) fn forward_all(cat: &Catalog, now: i64) -> Vec<i64> {
    let mut archived = Vec::new();
    for w in cat.claim(now, 100, &Allocations::new()).unwrap() {
        archived.extend(
            cat.forward_queue()
                .complete(w.id, &sent(&w), "dir:x", "k/", now, now)
                .unwrap(),
        );
    }
    archived
}

/// What the sink would report for `work`'s recordings.
pub(super) fn sent(work: &Work) -> Vec<Forwarded> {
    work.recordings
        .iter()
        .map(|r| Forwarded {
            position: r.position,
            key: format!("k/{}", r.name),
            bytes: 10,
            sha256: "s".into(),
        })
        .collect()
}

#[test]
fn migrations_apply_once_and_reopen() {
    let fx = fixture();
    drop(fx.cat);
    let again = Catalog::open(&fx.path).unwrap();
    let v: i64 = again.lock().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, schema::MIGRATIONS.len() as i64);
    let mode: String = again.lock().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert!(Catalog::open_read_only(&fx.path).is_ok());
}

on_both_stores! {
fn audio_then_metadata_is_ready_at_once_and_forwards(fx: Fixture) {
    let wav = recording(&fx.cat, "c1.wav", "aa", 1000);
    let (csv_file, meta) = metadata(&fx.cat, "batch.csv", 1001);
    let (ready, _) = fx
        .cat
        .files()
        .add_rows(meta, &[row(2, "C1", &["c1.wav"], "a")], 1002, GRACE)
        .unwrap();
    fx.cat.files().finish_metadata(meta, Ok(())).unwrap();
    assert_eq!(ready, 1);
    assert_eq!(states(&fx.cat), [("C1".into(), "ready".into())]);
    let work = fx.cat.claim(1003, 10, &Allocations::new()).unwrap();
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].recordings[0].file_id, wav);
    assert_eq!(work[0].metadata_file, "batch.csv");
    assert_eq!(states(&fx.cat), [("C1".into(), "forwarding".into())]);
    assert!(
        fx.cat.claim(1003, 10, &Allocations::new()).unwrap().is_empty(),
        "a claimed conversation is not claimed twice"
    );
    let fw = [Forwarded {
        position: 0,
        key: "k".into(),
        bytes: 10,
        sha256: "aa".into(),
    }];
    let candidates = fx
        .cat
        .forward_queue()
        .complete(work[0].id, &fw, "dir:x", "p/", 1003, 1004)
        .unwrap();
    let mut ids = archive(&fx.cat, &candidates, 1004);
    ids.sort();
    assert_eq!(
        ids,
        [wav, csv_file],
        "both the recording and the fully decided metadata file may leave"
    );
    let lines = fx.cat.reports().report_lines(meta).unwrap();
    assert_eq!((lines[0].status, lines[0].row), ("forwarded", Some(2)));
}
}

on_both_stores! {
fn metadata_then_audio_waits_then_completes(fx: Fixture) {
    let (_, meta) = metadata(&fx.cat, "sub/batch.csv", 1000);
    fx.cat
        .files()
        .add_rows(meta, &[row(2, "C1", &["c1.wav", "c1b.wav"], "a")], 1000, GRACE)
        .unwrap();
    assert_eq!(states(&fx.cat), [("C1".into(), "waiting".into())]);
    // Same name in another folder does not count (same-directory rule).
    recording(&fx.cat, "c1.wav", "aa", 1001);
    recording(&fx.cat, "sub/c1.wav", "aa", 1002);
    assert_eq!(states(&fx.cat), [("C1".into(), "waiting".into())]);
    match arrive(&fx.cat, "sub/c1b.wav", FileKind::Recording, 10, "bb", 1003) {
        Registered::Recording { completed, .. } => assert_eq!(completed, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(states(&fx.cat), [("C1".into(), "ready".into())]);
}
}

on_both_stores! {
fn repeated_events_are_duplicates(fx: Fixture) {
    recording(&fx.cat, "c1.wav", "aa", 1000);
    assert_eq!(
        arrive(&fx.cat, "c1.wav", FileKind::Recording, 10, "aa", 1000),
        Registered::Duplicate
    );
    let rel = RelPath::parse("c1.wav").unwrap();
    assert!(
        fx.cat
            .files()
            .is_present_unchanged("acme", &rel, 10, 1000, 1000)
            .unwrap()
    );
    assert!(
        !fx.cat
            .files()
            .is_present_unchanged("acme", &rel, 11, 1000, 1000)
            .unwrap()
    );
    assert!(
        !fx.cat.files().is_present_unchanged("acme", &rel, 10, 1000, 7).unwrap(),
        "another inode is another file"
    );
}
}

on_both_stores! {
fn duplicate_conversation_id_in_one_file_is_rejected(fx: Fixture) {
    let (_, meta) = metadata(&fx.cat, "batch.csv", 1000);
    fx.cat
        .files()
        .add_rows(
            meta,
            &[row(2, "C1", &["c1.wav"], "a"), row(3, "C1", &["c2.wav"], "b")],
            1000,
            GRACE,
        )
        .unwrap();
    let lines = fx.cat.reports().report_lines(meta).unwrap();
    assert_eq!(lines[1].status, "rejected");
    assert!(lines[1].detail.contains("already used by row 2"), "{}", lines[1].detail);
}
}

on_both_stores! {
fn resend_identical_is_a_no_op_and_changed_is_an_update(fx: Fixture) {
    recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m1) = metadata(&fx.cat, "b1.csv", 1000);
    fx.cat
        .files()
        .add_rows(m1, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    forward_all(&fx.cat, 1001);
    // The client sends the same audio and row again (the first copies were archived).
    archive(
        &fx.cat,
        &fx.cat.forward_queue().archive_candidates("acme").unwrap(),
        1002,
    );
    let again = recording(&fx.cat, "c1.wav", "aa", 1003);
    let (_, m2) = metadata(&fx.cat, "b2.csv", 1003);
    let (_, decided) = fx
        .cat
        .files()
        .add_rows(m2, &[row(2, "C1", &["c1.wav"], "a")], 1003, GRACE)
        .unwrap();
    assert!(
        decided.contains(&again),
        "the duplicate recording may leave the drop folder"
    );
    let l = &fx.cat.reports().report_lines(m2).unwrap()[0];
    assert_eq!(l.status, "forwarded");
    assert!(l.detail.contains("identical"), "{}", l.detail);
    assert!(
        fx.cat.claim(1004, 10, &Allocations::new()).unwrap().is_empty(),
        "nothing is sent for an identical re-send"
    );
    // Now with a different agent: forwarded again, reported as updated.
    let (_, m3) = metadata(&fx.cat, "b3.csv", 1005);
    fx.cat
        .files()
        .add_rows(m3, &[row(2, "C1", &["c1.wav"], "b")], 1005, GRACE)
        .unwrap();
    forward_all(&fx.cat, 1006);
    assert_eq!(fx.cat.reports().report_lines(m3).unwrap()[0].status, "updated");
}
}

on_both_stores! {
fn a_later_send_replaces_a_waiting_one_and_never_races_a_forwarding_one(fx: Fixture) {
    let (_, m1) = metadata(&fx.cat, "b1.csv", 1000);
    fx.cat
        .files()
        .add_rows(m1, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    let (_, m2) = metadata(&fx.cat, "b2.csv", 1001);
    fx.cat
        .files()
        .add_rows(m2, &[row(2, "C1", &["c1.wav"], "b")], 1001, GRACE)
        .unwrap();
    let l = &fx.cat.reports().report_lines(m1).unwrap()[0];
    assert_eq!(l.status, "rejected");
    assert!(
        l.detail.contains("replaced by a later send: row 2 of b2.csv"),
        "{}",
        l.detail
    );

    recording(&fx.cat, "c1.wav", "aa", 1002);
    let first = fx.cat.claim(1003, 10, &Allocations::new()).unwrap();
    assert_eq!(first.len(), 1);
    // A third send arrives while the second is being forwarded: it waits its turn.
    let (_, m3) = metadata(&fx.cat, "b3.csv", 1004);
    fx.cat
        .files()
        .add_rows(m3, &[row(2, "C1", &["c1.wav"], "c")], 1004, GRACE)
        .unwrap();
    assert!(fx.cat.claim(1005, 10, &Allocations::new()).unwrap().is_empty());
    fx.cat
        .forward_queue()
        .complete(first[0].id, &[], "dir:x", "k/", 1003, 1006)
        .unwrap();
    assert_eq!(fx.cat.claim(1007, 10, &Allocations::new()).unwrap().len(), 1);
}
}

#[test]
fn recovery_requeues_interrupted_forwards() {
    let fx = fixture();
    recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    assert_eq!(fx.cat.claim(1001, 10, &Allocations::new()).unwrap().len(), 1);
    drop(fx.cat);
    let cat = Catalog::open(&fx.path).unwrap();
    assert_eq!(cat.forward_queue().recover(1002).unwrap(), 1);
    let w = cat.claim(1003, 10, &Allocations::new()).unwrap();
    assert_eq!((w.len(), w[0].attempts), (1, 2));
}

on_both_stores! {
fn transient_failures_back_off_and_permanent_ones_wait_for_retry(fx: Fixture) {
    recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    let w = fx.cat.claim(1001, 10, &Allocations::new()).unwrap();
    fx.cat
        .forward_queue()
        .retry_later(w[0].id, "503 Slow Down", 5000, 1001)
        .unwrap();
    assert!(fx.cat.claim(4999, 10, &Allocations::new()).unwrap().is_empty());
    assert_eq!(fx.cat.forward_queue().next_due().unwrap(), Some(5000));
    let w = fx.cat.claim(5000, 10, &Allocations::new()).unwrap();
    fx.cat.forward_queue().fail(w[0].id, "AccessDenied", 5001).unwrap();
    assert_eq!(states(&fx.cat), [("C1".into(), "failed".into())]);
    assert_eq!(fx.cat.reports().report_lines(m).unwrap()[0].detail, "AccessDenied");
    assert!(fx.cat.claim(99_999, 10, &Allocations::new()).unwrap().is_empty());
    assert_eq!(fx.cat.reports().retry(Some("acme"), None, 6000, GRACE).unwrap(), 1);
    assert_eq!(fx.cat.claim(6000, 10, &Allocations::new()).unwrap().len(), 1);
}
}

on_both_stores! {
fn grace_expires_rows_and_orphans_recordings_and_late_audio_revives(fx: Fixture) {
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    recording(&fx.cat, "stray.wav", "aa", 1000);
    assert_eq!(fx.cat.files().expire(1000 + GRACE - 1, GRACE).unwrap(), (0, 0));
    assert_eq!(fx.cat.files().expire(1000 + GRACE, GRACE).unwrap(), (1, 1));
    let l = &fx.cat.reports().report_lines(m).unwrap()[0];
    assert_eq!(l.status, "expired");
    assert!(l.detail.contains("c1.wav"), "{}", l.detail);
    assert_eq!(fx.cat.reports().orphan_lines("acme").unwrap()[0].recording, "stray.wav");
    // The recording turns up late: the row is revived rather than the call lost.
    recording(&fx.cat, "c1.wav", "bb", 1000 + GRACE + 5);
    assert_eq!(states(&fx.cat), [("C1".into(), "ready".into())]);
}
}

on_both_stores! {
fn vanished_recordings_put_the_conversation_back_to_waiting(fx: Fixture) {
    let f = recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    let w = fx.cat.claim(1001, 10, &Allocations::new()).unwrap();
    fx.cat
        .forward_queue()
        .recording_vanished(w[0].id, f, "deleted", 1002, GRACE)
        .unwrap();
    assert_eq!(states(&fx.cat), [("C1".into(), "waiting".into())]);
    recording(&fx.cat, "c1.wav", "aa", 1003);
    assert_eq!(states(&fx.cat), [("C1".into(), "ready".into())]);
}
}

on_both_stores! {
fn whole_file_rejection_withdraws_rows_and_reports_one_line(fx: Fixture) {
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    fx.cat.files().finish_metadata(m, Err("not UTF-8 text".into())).unwrap();
    assert!(states(&fx.cat).is_empty());
    let lines = fx.cat.reports().report_lines(m).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0].status, lines[0].detail.as_str(), lines[0].row),
        ("rejected", "not UTF-8 text", None)
    );
}
}

on_both_stores! {
fn report_staleness_survives_a_change_during_the_write(fx: Fixture) {
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    let stale = fx.cat.reports().stale_reports(0, 10).unwrap();
    assert_eq!(stale.len(), 1);
    // A row changes after the writer read the report but before it marked it written.
    recording(&fx.cat, "c1.wav", "aa", 1001);
    fx.cat.reports().report_written(m, stale[0].version).unwrap();
    assert_eq!(
        fx.cat.reports().stale_reports(0, 10).unwrap().len(),
        1,
        "the newer change must still be written"
    );
    let again = fx.cat.reports().stale_reports(0, 10).unwrap();
    fx.cat.reports().report_written(m, again[0].version).unwrap();
    assert!(fx.cat.reports().stale_reports(0, 10).unwrap().is_empty());
}
}

on_both_stores! {
fn a_file_resent_while_its_namesake_leaves_is_a_new_file(fx: Fixture) {
    let old = recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m1) = metadata(&fx.cat, "b1.csv", 1000);
    fx.cat
        .files()
        .add_rows(m1, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    let candidates = forward_all(&fx.cat, 1001);
    let claimed = claim(&fx.cat, &candidates, 1002);
    assert!(claimed.iter().any(|c| c.file_id == old && c.ino == Some(1000)));
    assert_eq!(file_state(&fx.cat, old), "leaving");
    // The tenant sends it again while it is being moved: a new record, matched by new rows.
    let new = recording(&fx.cat, "c1.wav", "aa", 1003);
    assert_ne!(new, old);
    let (_, m2) = metadata(&fx.cat, "b2.csv", 1003);
    let (_, decided) = fx
        .cat
        .files()
        .add_rows(m2, &[row(2, "C1", &["c1.wav"], "a")], 1003, GRACE)
        .unwrap();
    assert!(
        decided.contains(&new),
        "the identical re-send is decided with its own file"
    );
    assert!(!decided.contains(&old));
    let moved: Vec<_> = claimed.iter().map(|c| (c.file_id, Departure::Archived)).collect();
    fx.cat.forward_queue().settle_departures(&moved, 1004).unwrap();
    assert_eq!(
        (file_state(&fx.cat, old), file_state(&fx.cat, new)),
        ("archived".into(), "present".into())
    );
}
}

on_both_stores! {
fn a_move_that_failed_leaves_the_file_present_unless_a_newer_one_took_its_name(fx: Fixture) {
    let (a, ma) = metadata(&fx.cat, "a.csv", 1000);
    let (b, mb) = metadata(&fx.cat, "b.csv", 1000);
    for m in [ma, mb] {
        fx.cat.files().finish_metadata(m, Ok(())).unwrap();
    }
    assert_eq!(claim(&fx.cat, &[a, b], 1001).len(), 2);
    let (newer, _) = metadata(&fx.cat, "b.csv", 1002);
    fx.cat
        .forward_queue()
        .settle_departures(&[(a, Departure::Stayed), (b, Departure::Stayed)], 1003)
        .unwrap();
    assert_eq!(file_state(&fx.cat, a), "present");
    assert_eq!(file_state(&fx.cat, b), "gone");
    assert_eq!(file_state(&fx.cat, newer), "present");
    assert_eq!(fx.cat.forward_queue().unsettled_departures(i64::MAX).unwrap(), []);
}
}

on_both_stores! {
fn purge_after_retention(fx: Fixture) {
    let f = recording(&fx.cat, "c1.wav", "aa", 1000);
    let (_, m) = metadata(&fx.cat, "b.csv", 1000);
    fx.cat
        .files()
        .add_rows(m, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    fx.cat.files().finish_metadata(m, Ok(())).unwrap();
    let candidates = forward_all(&fx.cat, 1001);
    archive(&fx.cat, &candidates, 2000);
    assert!(
        fx.cat
            .forward_queue()
            .purgeable(2999, 1000, &[], 10)
            .unwrap()
            .is_empty()
    );
    // A tenant's own retention, longer or shorter than the default.
    assert!(
        fx.cat
            .forward_queue()
            .purgeable(3000, 1000, &[("acme", 1001)], 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        fx.cat
            .forward_queue()
            .purgeable(2500, 1000, &[("acme", 500)], 10)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        fx.cat
            .forward_queue()
            .purgeable(2500, 1000, &[("beta", 500)], 10)
            .unwrap()
            .len(),
        0
    );
    let p = fx.cat.forward_queue().purgeable(3000, 1000, &[], 10).unwrap();
    assert_eq!(p.len(), 2, "the recording and its metadata file");
    let rec = p.iter().find(|p| p.file_id == f).unwrap();
    assert_eq!((rec.path.clone(), rec.archived), (format!("/archive/{f}"), true));
    let ids: Vec<i64> = p.iter().map(|item| item.file_id).collect();
    fx.cat.forward_queue().mark_purged(&ids, 3000).unwrap();
    assert!(
        fx.cat
            .forward_queue()
            .purgeable(9999, 1000, &[], 10)
            .unwrap()
            .is_empty()
    );
}
}
