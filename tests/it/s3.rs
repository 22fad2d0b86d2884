//! The S3 sink against a real S3-compatible server on loopback (`rclone serve s3`), with boto3
//! for assertions. No mock S3.

use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);
const MULTIPART: &str = "multipart_threshold = \"8MiB\"\npart_size = \"5MiB\"\npart_concurrency = 3\n";

fn conversation(d: &Daemon, id: &str, bytes: &[u8], batch: &str) {
    d.put("acme", &format!("{id}.wav"), bytes);
    d.put("acme", batch, one_row_csv(id, &format!("{id}.wav")).as_bytes());
}

fn prefix(id: &str) -> String {
    format!("in/acme/2019/05/03/{id}/")
}

fn wait_keys(s3: &S3Server, n: usize) -> Vec<String> {
    wait_for(&format!("{n} metadata.json objects"), T, || {
        s3.keys().iter().filter(|k| k.ends_with("metadata.json")).count() >= n
    });
    s3.keys()
}

#[test]
fn small_and_multipart_recordings_arrive_byte_identical() {
    let mut s3 = S3Server::new();
    s3.start();
    let mut d = Daemon::with_s3(&s3, "SECRET", MULTIPART);
    d.start();
    let small = audio("s3-small", 30_000);
    let big = audio("s3-big", 41 * 1024 * 1024 + 12345);
    d.put("acme", "S3-A.wav", &small);
    d.put("acme", "S3-B.wav", &big);
    d.put(
        "acme",
        "batch.csv",
        format!(
            "{HEADER}\n{}\n{}\n",
            csv_row("S3-A", "S3-A.wav"),
            csv_row("S3-B", "S3-B.wav")
        )
        .as_bytes(),
    );
    let keys = wait_keys(&s3, 2);
    let want: Vec<String> = [
        "S3-A/S3-A.wav",
        "S3-A/metadata.json",
        "S3-B/S3-B.wav",
        "S3-B/metadata.json",
    ]
    .iter()
    .map(|k| format!("in/acme/2019/05/03/{k}"))
    .collect();
    assert_eq!(keys, want);
    assert_eq!(s3.sha256(&format!("{}S3-A.wav", prefix("S3-A"))), sha256_hex(&small));
    assert_eq!(s3.sha256(&format!("{}S3-B.wav", prefix("S3-B"))), sha256_hex(&big));
    let doc: serde_json::Value = serde_json::from_str(&s3.boto3(&format!(
        "print(s3.get_object(Bucket='calls', Key='{}metadata.json')['Body'].read().decode())",
        prefix("S3-B")
    )))
    .unwrap();
    assert_eq!(doc["recordings"][0]["sha256"], sha256_hex(&big));
    assert_eq!(doc["recordings"][0]["bytes"], big.len());
    assert_eq!(s3.open_multipart_uploads(), 0);
}

/// A conversation id whose encoding passes 255 bytes is shortened, the same way the dir sink
/// shortens it, so a store that keeps objects as files (rclone's) takes it.
#[test]
fn a_long_conversation_id_reaches_s3_shortened() {
    let mut s3 = S3Server::new();
    s3.start();
    let mut d = Daemon::with_s3(&s3, "SECRET", "");
    d.start();
    let id = "話".repeat(84);
    let bytes = audio("s3-long", 4000);
    d.put("acme", "long.wav", &bytes);
    d.put("acme", "batch.csv", one_row_csv(&id, "long.wav").as_bytes());
    let keys = wait_keys(&s3, 1);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let folder = keys[0].rsplit_once('/').unwrap().0;
    let segment = folder.rsplit('/').next().unwrap();
    assert!(segment.starts_with("%E8%A9%B1") && segment.len() <= 255, "{segment}");
    assert_eq!(keys[0], format!("{folder}/long.wav"));
    assert_eq!(s3.sha256(&keys[0]), sha256_hex(&bytes));
    let doc: serde_json::Value = serde_json::from_str(&s3.boto3(&format!(
        "print(s3.get_object(Bucket='calls', Key='{folder}/metadata.json')['Body'].read().decode())"
    )))
    .unwrap();
    assert_eq!(doc["conversation_id"], id.as_str());
}

#[test]
fn an_outage_queues_conversations_and_the_backlog_drains() {
    let mut s3 = S3Server::new();
    // Down at start-up: a warning, not a crash.
    let mut d = Daemon::with_s3(&s3, "SECRET", "");
    d.start();
    for i in 0..3 {
        conversation(
            &d,
            &format!("OUT-{i}"),
            &audio(&format!("out{i}"), 5000),
            &format!("b{i}.csv"),
        );
    }
    wait_for("attempts against the missing server", T, || {
        let v: serde_json::Value = serde_json::from_slice(&d.cli(&["conversations", "--json"]).stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["attempts"].as_i64() >= Some(1))
            .count()
            == 3
    });
    assert!(d.is_running());
    s3.start();
    wait_keys(&s3, 3);
    // Down again mid-run, then back on the same port.
    s3.stop();
    for i in 3..6 {
        conversation(
            &d,
            &format!("OUT-{i}"),
            &audio(&format!("out{i}"), 5000),
            &format!("b{i}.csv"),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    s3.start();
    let keys = wait_keys(&s3, 6);
    for i in 0..6 {
        let key = format!("{}OUT-{i}.wav", prefix(&format!("OUT-{i}")));
        assert!(keys.contains(&key), "{key} missing");
        assert_eq!(s3.sha256(&key), sha256_hex(&audio(&format!("out{i}"), 5000)));
    }
}

#[test]
fn kill_9_during_a_multipart_upload_ends_forwarded_with_no_orphan_upload() {
    let mut s3 = S3Server::new();
    // Slow enough that the upload is surely in flight when the daemon is killed.
    s3.start_limited("30M");
    // One part at a time, so the upload is still open when we pull the plug.
    let mut d = Daemon::with_s3(
        &s3,
        "SECRET",
        "multipart_threshold = \"8MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1\n",
    );
    d.start();
    let big = audio("crash-big", 64 * 1024 * 1024);
    conversation(&d, "MP-1", &big, "b.csv");
    // Kill while an upload is open. If that upload was just being aborted (a part failed under
    // load), nothing is left open: start again and kill the next attempt.
    let mut left_open = false;
    for _ in 0..3 {
        wait_for("the multipart upload to start", T, || s3.open_multipart_uploads() > 0);
        d.kill9();
        left_open = s3.open_multipart_uploads() > 0;
        d.start();
        if left_open {
            break;
        }
    }
    assert!(
        left_open,
        "could not crash the daemon in the middle of a multipart upload"
    );
    let keys = wait_keys(&s3, 1);
    assert_eq!(
        keys,
        [
            format!("{}MP-1.wav", prefix("MP-1")),
            format!("{}metadata.json", prefix("MP-1"))
        ]
    );
    assert_eq!(s3.sha256(&keys[0]), sha256_hex(&big));
    assert_eq!(
        s3.open_multipart_uploads(),
        0,
        "an orphan multipart upload was left behind"
    );
}

#[test]
fn refused_credentials_fail_permanently_without_hammering() {
    let mut s3 = S3Server::new();
    s3.start();
    let mut d = Daemon::with_s3(&s3, "WRONG", "");
    d.start();
    conversation(&d, "CR-1", &audio("cr1", 1000), "b.csv");
    wait_for("the conversation to fail", T, || {
        let v: serde_json::Value = serde_json::from_slice(&d.cli(&["conversations", "--json"]).stdout).unwrap();
        v[0]["state"] == "failed"
    });
    std::thread::sleep(Duration::from_millis(1500));
    let v: serde_json::Value = serde_json::from_slice(&d.cli(&["conversations", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["attempts"], 1, "a permanent error must not be retried: {v}");
    let detail = v[0]["detail"].as_str().unwrap();
    assert!(
        ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"]
            .iter()
            .any(|c| detail.contains(c)),
        "the reason should name the refusal: {detail}"
    );
    let status = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    assert!(
        status.contains("recent failures") && status.contains("CR-1"),
        "{status}"
    );
    assert!(s3.keys().is_empty());
}
