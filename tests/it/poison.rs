//! Poison work: a unit that panics (a bug, injected here through the debug build's
//! `DROPSYNC_INJECT_PANIC`) costs that unit only. It counts as a failed attempt, ends `failed`
//! after `max_attempts` with its reason in the report and `status`, the tenant's other work and
//! other tenants go on, and `dropsync retry` queues it again.

use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

fn daemon() -> Daemon {
    let tenants = format!("[limits]\nmax_attempts = 3\n{ACME}\n[[tenants]]\nid = \"beta\"\n");
    Daemon::new("1h", &tenants)
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap()
}

/// Panics the log shows (the panic hook prints the message on a line of its own).
fn panics(d: &Daemon, message: &str) -> usize {
    d.log().lines().filter(|l| l.trim() == message).count()
}

#[test]
fn a_metadata_file_that_panics_fails_alone_and_a_retry_takes_it_again() {
    let mut d = daemon();
    d.start_with_env(&[("DROPSYNC_INJECT_PANIC", "parse:poison.csv")]);
    let a1 = audio("p1", 2000);
    d.put("acme", "p1.wav", &a1);
    d.put("acme", "poison.csv", one_row_csv("P-1", "p1.wav").as_bytes());
    // Its report says why, once it has failed max_attempts times.
    let lines = d.wait_report_any("acme", "poison.csv.report.csv", 1);
    assert_eq!(lines[0][3], "failed", "{lines:?}");
    assert!(
        lines[0][4].contains("injected panic at parse for poison.csv"),
        "{lines:?}"
    );
    // The tenant's later file and another tenant are served meanwhile.
    d.put("acme", "c2.wav", &audio("c2", 2000));
    d.put("acme", "good.csv", one_row_csv("C-2", "c2.wav").as_bytes());
    d.put("beta", "b1.wav", &audio("b1", 2000));
    d.put("beta", "b1.csv", beta_csv("B-1", "b1.wav").as_bytes());
    let fwd = d.wait_forwarded(2, T);
    assert!(fwd.contains_key("C-2") && fwd.contains_key("B-1"), "{fwd:?}");
    let s = status(&d);
    assert_eq!(s["tenants"]["acme"]["intake_failed"], 1, "{s}");
    assert_eq!(s["tenants"]["acme"]["intake_queued"], 0, "{s}");
    assert!(
        s["tenants"]["acme"]["intake_last_error"]
            .as_str()
            .unwrap()
            .starts_with("poison.csv: internal error"),
        "{s}"
    );
    assert!(d.is_running());
    // Attempts 1 and 2 were retried, the third failed it: three panics, no more.
    assert_eq!(panics(&d, "injected panic at parse for poison.csv"), 3, "{}", d.log());

    // The bug fixed (a daemon without the fault), `dropsync retry` takes the file again.
    d.stop();
    d.start();
    let out = d.cli(&["retry", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fwd = d.wait_forwarded(3, T);
    assert_recordings(&d, &fwd["P-1"], &[("p1.wav", &a1)]);
    wait_for("the report to say forwarded", T, || {
        d.read_report("acme", "poison.csv.report.csv")
            .iter()
            .map(|l| l[3].clone())
            .collect::<Vec<_>>()
            == ["forwarded"]
    });
}

#[test]
fn a_conversation_whose_forward_panics_fails_alone_and_a_retry_sends_it() {
    let mut d = daemon();
    d.start_with_env(&[("DROPSYNC_INJECT_PANIC", "forward:C-9")]);
    let a9 = audio("c9", 2000);
    d.put("acme", "c9.wav", &a9);
    d.put("acme", "c1.wav", &audio("c1", 2000));
    d.put(
        "acme",
        "batch.csv",
        format!("{HEADER}\n{}\n{}\n", csv_row("C-9", "c9.wav"), csv_row("C-1", "c1.wav")).as_bytes(),
    );
    d.put("beta", "b1.wav", &audio("b1", 2000));
    d.put("beta", "b1.csv", beta_csv("B-1", "b1.wav").as_bytes());
    wait_for("C-9 to fail", T, || {
        d.read_report("acme", "batch.csv.report.csv")
            .first()
            .is_some_and(|l| l[3] == "failed")
    });
    let lines = d.read_report("acme", "batch.csv.report.csv");
    assert!(lines[0][4].contains("injected panic at forward for C-9"), "{lines:?}");
    let fwd = d.wait_forwarded(2, T);
    assert!(fwd.contains_key("C-1") && fwd.contains_key("B-1") && !fwd.contains_key("C-9"));
    assert_eq!(panics(&d, "injected panic at forward for C-9"), 3, "{}", d.log());
    let s = status(&d);
    assert_eq!(s["tenants"]["acme"]["states"]["failed"], 1, "{s}");
    assert_eq!(s["recent_failures"][0]["conversation_id"], "C-9", "{s}");
    assert!(d.is_running());

    d.stop();
    d.start();
    let out = d.cli(&["retry", "--tenant", "acme", "--conversation", "C-9"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fwd = d.wait_forwarded(3, T);
    assert_recordings(&d, &fwd["C-9"], &[("c9.wav", &a9)]);
}
