//! What ships beside the binary: the Prometheus alerts and the Grafana dashboard checked by
//! `promtool` and against the metrics the daemon exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `dropsync_…` metric a text names, without the suffixes Prometheus adds to histograms.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("dropsync_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names the daemon's code records (`metrics::counter!("…")` and its kin).
fn recorded_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in walk(&repo().join("src")) {
        if file.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&file).unwrap();
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for piece in text.split(kind).skip(1) {
                    names.extend(metric_names(piece.split(',').next().unwrap_or("")));
                }
            }
        }
    }
    names
}

#[test]
fn the_alerts_and_the_dashboard_check_and_name_only_metrics_the_daemon_exports() {
    let alerts = repo().join("contrib/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&alerts)
        .output()
        .expect("promtool is missing: apt-get install prometheus (./scripts/test does)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // What a running daemon exports, after an upload went through, and what its code records.
    let mut d = Daemon::with_sftp("");
    let port = free_port();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    d.start();
    d.put("acme", "p.wav", &audio("p", 4000));
    d.put("acme", "p.csv", one_row_csv("P-1", "p.wav").as_bytes());
    d.wait_forwarded(1, Duration::from_secs(60));
    let mut scraped = String::new();
    wait_for("the health gauge", Duration::from_secs(20), || {
        scraped = http_get(port, "/metrics").1;
        sample(&scraped, &["dropsync_healthy"]).is_some()
    });
    d.stop();
    assert_eq!(sample(&scraped, &["dropsync_healthy"]), Some(1.0), "{scraped}");
    let exported: BTreeSet<String> = metric_names(&scraped).union(&recorded_in_source()).cloned().collect();
    assert!(exported.contains("dropsync_tenant_quota_bytes"), "{exported:?}");

    for file in [alerts, repo().join("contrib/grafana/dropsync.json")] {
        let text = std::fs::read_to_string(&file).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{}: {used:?}", file.display());
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{} names metrics the daemon does not export: {unknown:?}",
            file.display()
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("contrib/grafana/dropsync.json")).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}
