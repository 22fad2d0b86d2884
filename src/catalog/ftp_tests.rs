//! Tests of the catalog's FTP state: listings settled into pulls, and revisions of pulled
//! recordings.

use super::tests::{
    Fixture, GRACE, archive, fixture, fixture_pg, forward_all, metadata, on_both_stores, recording, row, sent, states,
};
use super::*;

fn remote(path: &str, size: u64, mtime_ms: i64) -> RemoteFile {
    RemoteFile {
        path: path.into(),
        size,
        mtime_ms,
    }
}

on_both_stores! {
fn ftp_listing_settles_pulls_once_and_forgets_vanished_files(f: Fixture) {
    let cat = &f.cat;
    let src = "acme ftp://u@h:21/out";
    cat.ftp_state()
        .ftp_register_source(src, "acme", "ftp://u@h:21/out")
        .unwrap();
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[remote("a.wav", 10, 1000), remote("b.csv", 5, 1000)], &[], 100)
        .unwrap();
    assert_eq!((a.new, a.changed, a.vanished), (2, 0, 0));
    assert_eq!(a.files["a.wav"].stable_since, 100);

    // Unchanged: stable_since stays, so the file settles; a growing one starts over.
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[remote("a.wav", 10, 1000), remote("b.csv", 9, 2000)], &[], 200)
        .unwrap();
    assert_eq!((a.new, a.changed), (0, 1));
    assert_eq!(a.files["a.wav"].stable_since, 100);
    assert_eq!(a.files["b.csv"].stable_since, 200);

    cat.ftp_state()
        .ftp_mark_partials(src, "acme", &[("a.wav".into(), version_tag(10, 1000))], &[], 300)
        .unwrap();
    cat.ftp_state()
        .ftp_mark_downloaded(src, "a.wav", 10, 1000, 300)
        .unwrap();
    cat.ftp_state()
        .ftp_mark_partials(src, "acme", &[("b.csv".into(), version_tag(9, 2000))], &[], 300)
        .unwrap();
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[remote("a.wav", 10, 1000), remote("b.csv", 9, 2000)], &[], 400)
        .unwrap();
    assert!(a.files["a.wav"].is_pulled());
    assert_eq!(a.files["a.wav"].partial, None);
    assert!(!a.files["b.csv"].is_pulled());

    // Pulled again only when it changes.
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[remote("a.wav", 11, 1000)], &[], 500)
        .unwrap();
    assert!(!a.files["a.wav"].is_pulled());
    assert_eq!(a.vanished, 1);
    assert_eq!(a.vanished_partials, vec!["b.csv".to_string()]);

    cat.ftp_state()
        .ftp_record_poll(
            src,
            "acme",
            "ftp://u@h:21/out",
            600,
            &PollRecord {
                listed: false,
                error: Some("530 Login incorrect".into()),
                remote_files: 0,
                waiting: 0,
                incomplete: None,
            },
        )
        .unwrap();
    let s = &cat.ftp_state().ftp_sources(Some("acme")).unwrap()[0];
    assert_eq!((s.files_pulled, s.bytes_pulled, s.errors_in_row), (1, 10, 1));
    assert_eq!(s.last_error.as_deref(), Some("530 Login incorrect"));
}
}

on_both_stores! {
/// Files under a folder the server would not list, or listed only in part, are neither
/// forgotten nor have their partial downloads thrown away; elsewhere a missing file is gone.
fn files_under_an_incomplete_folder_are_kept_not_taken_as_gone(f: Fixture) {
    let cat = &f.cat;
    let src = "acme ftp://u@h:21/";
    cat.ftp_state()
        .ftp_register_source(src, "acme", "ftp://u@h:21/")
        .unwrap();
    let all = [
        remote("locked/a.wav", 1, 1),
        remote("locked/deep/b.wav", 1, 1),
        remote("lockedness/c.wav", 1, 1),
        remote("big/d.wav", 1, 1),
        remote("e.wav", 1, 1),
    ];
    cat.ftp_state().ftp_apply_listing(src, &all, &[], 100).unwrap();
    cat.ftp_state()
        .ftp_mark_partials(src, "acme", &[("big/d.wav".into(), version_tag(1, 1))], &[], 100)
        .unwrap();
    // Now "locked" is refused and "big" comes back cut short, without d.wav.
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[], &["locked".into(), "big".into()], 200)
        .unwrap();
    assert_eq!(
        a.vanished, 2,
        "lockedness/c.wav and e.wav are gone; the others are kept"
    );
    assert!(a.vanished_partials.is_empty(), "{:?}", a.vanished_partials);
    // Listed whole again: all there, d.wav's partial still known.
    let a = cat.ftp_state().ftp_apply_listing(src, &all[..4], &[], 300).unwrap();
    assert_eq!((a.new, a.vanished), (1, 0), "only lockedness/c.wav is new again");
    assert_eq!(
        a.files["big/d.wav"].partial.as_deref(),
        Some(version_tag(1, 1).as_str())
    );
    assert_eq!(a.files["locked/deep/b.wav"].stable_since, 100);
    // The source's own folder cut short keeps everything.
    let a = cat
        .ftp_state()
        .ftp_apply_listing(src, &[], &[String::new()], 400)
        .unwrap();
    assert_eq!(a.vanished, 0);
}
}

on_both_stores! {
/// A recording pulled, forwarded and archived, then changed on the server: its new version,
/// noted as a revision by the poller, sends the conversation again with the new bytes
/// (`updated`); a file of the same name not noted as one is a new recording (an orphan here).
fn a_revision_of_a_pulled_recording_sends_its_conversation_again(fx: Fixture) {
    let cat = &fx.cat;
    let src = "acme ftp://u@h:21/";
    let old = recording(cat, "c1.wav", "aa", 1000);
    let other = recording(cat, "c2.wav", "bb", 1000);
    let (_, m1) = metadata(cat, "b1.csv", 1000);
    cat.files()
        .add_rows(m1, &[row(2, "C1", &["c1.wav", "c2.wav"], "a")], 1000, GRACE)
        .unwrap();
    forward_all(cat, 1001);
    archive(cat, &cat.forward_queue().archive_candidates("acme").unwrap(), 1002);
    assert!(cat.claim(1003, 10, &Allocations::new()).unwrap().is_empty());

    // Not a noted revision: a new recording no row claims.
    let stranger = recording(cat, "c1.wav", "cc", 1004);
    assert!(cat.claim(1005, 10, &Allocations::new()).unwrap().is_empty());
    archive(cat, &[stranger], 1005);

    cat.ftp_state()
        .ftp_mark_partials(src, "acme", &[], &[("c1.wav".into(), 10)], 1006)
        .unwrap();
    let new = recording(cat, "c1.wav", "dd", 1007);
    let work = cat.claim(1008, 10, &Allocations::new()).unwrap();
    assert_eq!(work.len(), 1, "sent again");
    let files: Vec<i64> = work[0].recordings.iter().map(|r| r.file_id).collect();
    assert_eq!(
        files,
        [new, other],
        "the new version, and the other recording from the archive"
    );
    assert!(work[0].recordings[1].archive_path.is_some());
    assert_ne!(new, old);
    let leaving = cat
        .forward_queue()
        .complete(work[0].id, &sent(&work[0]), "dir", "k/", 1008, 1009)
        .unwrap();
    let moved = archive(cat, &leaving, 1009);
    assert!(
        moved.contains(&new) && !moved.contains(&other),
        "the archived one stays archived"
    );
    assert_eq!(cat.reports().report_lines(m1).unwrap()[0].status, "updated");
    assert_eq!(states(cat), [("C1".to_string(), "forwarded".to_string())]);
    // The note is used up: the next file of that name is a new recording again.
    recording(cat, "c1.wav", "ee", 1010);
    assert!(cat.claim(1011, 10, &Allocations::new()).unwrap().is_empty());
}
}

on_both_stores! {
/// A revision the poller noted whose bytes are those already sent (a file touched on the
/// server) is the same conversation sent twice: nothing goes out again, it stays `forwarded`
/// (not `updated`), and the new copy is free to leave.
fn a_revision_with_the_bytes_already_sent_is_not_sent_again(fx: Fixture) {
    let cat = &fx.cat;
    recording(cat, "c1.wav", "aa", 1000);
    let (_, m1) = metadata(cat, "b1.csv", 1000);
    cat.files()
        .add_rows(m1, &[row(2, "C1", &["c1.wav"], "a")], 1000, GRACE)
        .unwrap();
    forward_all(cat, 1001);
    archive(cat, &cat.forward_queue().archive_candidates("acme").unwrap(), 1002);

    cat.ftp_state()
        .ftp_mark_partials("acme ftp://u@h:21/", "acme", &[], &[("c1.wav".into(), 10)], 1003)
        .unwrap();
    let same = super::tests::arrive(cat, "c1.wav", crate::dropbox::FileKind::Recording, 10, "aa", 1004);
    let Registered::Recording {
        file_id,
        completed,
        decided,
    } = same
    else {
        panic!("{same:?}");
    };
    assert_eq!((completed, decided), (0, vec![file_id]), "decided, not sent again");
    assert!(cat.claim(1005, 10, &Allocations::new()).unwrap().is_empty());
    assert_eq!(cat.reports().report_lines(m1).unwrap()[0].status, "forwarded");
    assert_eq!(states(cat), [("C1".to_string(), "forwarded".to_string())]);
}
}
