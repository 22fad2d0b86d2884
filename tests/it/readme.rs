//! The README's "Two commands" and "Walk-through", run as written: the daemon started by command
//! 1 on a copy of `config.example.toml`, then the walk-through's shell lines with bash. If the
//! README drifts from the product, this fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const README: &str = include_str!("../../README.md");
const EXAMPLE_CONFIG: &str = include_str!("../../config.example.toml");

/// The body of the first ```sh block after the heading `heading`.
fn sh_block(heading: &str) -> String {
    let section = README
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?}"))
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let body = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("{heading:?} has no ```sh block"))
        .0;
    body.to_owned()
}

/// A README line with the debug binary in place of `cargo run --release --`.
fn with_binary(line: &str) -> String {
    line.replace("cargo run --release --", BIN)
}

/// Runs `script` with bash in `dir`; its stdout, after checking it exited 0.
fn bash(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README lines failed ({:?}):\n{script}\n--- stdout\n{stdout}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The daemon of command 1, killed when dropped.
struct Command1(Child);

impl Drop for Command1 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_walk_through_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The example's fixed SFTP port may be taken on a machine that runs tests side by side.
    let fixed = "listen = \"127.0.0.1:2022\"";
    assert!(
        EXAMPLE_CONFIG.contains(fixed),
        "config.example.toml no longer has {fixed}"
    );
    let port = free_port();
    std::fs::write(
        root.join("config.example.toml"),
        EXAMPLE_CONFIG.replace(fixed, &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .unwrap();

    let two = sh_block("## Two commands");
    let command1 = two
        .lines()
        .skip_while(|l| !l.starts_with("# 1."))
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("command 1 is not in \"Two commands\"");
    let log = std::fs::File::create(root.join("daemon.log")).unwrap();
    let _daemon = Command1(
        Command::new("bash")
            .arg("-c")
            .arg(format!("exec {}", with_binary(command1)))
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let daemon_log = || std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default();
    wait_for(
        "command 1 to log `dropsync is running`",
        Duration::from_secs(60),
        || daemon_log().contains("dropsync is running"),
    );

    // The walk-through: what a contact centre drops, then what a newcomer looks at.
    let walk = sh_block("## Walk-through: one conversation, end to end");
    let (drops, looks) = walk
        .split_once("\n\n")
        .expect("the walk-through's two parts are no longer apart");
    bash(root, &with_binary(drops));
    let report = root.join("var/drop/acme/reports/batch.csv.report.csv");
    wait_for(
        "batch.csv's report to decide both rows",
        Duration::from_secs(60),
        || std::fs::read_to_string(&report).is_ok_and(|r| r.lines().count() == 3 && !r.contains(",waiting,")),
    );

    let mut checked = 0;
    for line in looks.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let line = with_binary(line);
        let out = bash(root, &line);
        let has = |s: &str| assert!(out.contains(s), "{line}: no {s:?} in:\n{out}\n{}", daemon_log());
        match line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
            ["cat", path] if path.ends_with("report.csv") => {
                has("C-1,c1.wav,forwarded,");
                has("C-2,c2.wav,rejected,");
            }
            ["find", "var/outbox"] => {
                has("var/outbox/acme/2019/05/03/C-1/c1.wav");
                has("var/outbox/acme/2019/05/03/C-1/metadata.json");
            }
            ["cat", path] if path.ends_with("metadata.json") => {
                let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(doc["conversation_id"], "C-1");
                // The README's sentence after the block: Europe/Paris 09:27:23 is 07:27:23Z.
                assert_eq!(doc["contact_time"], "2019-05-03T07:27:23Z");
                assert_eq!(doc["fields"]["Queue"], "sales");
                assert!(doc["duration_ms"].as_u64().is_some_and(|ms| ms > 0), "{doc}");
            }
            [BIN, "status"] => has("acme: forwarded=1 rejected=1"),
            [BIN, "conversations"] => {
                let state = |id: &str| {
                    out.lines()
                        .find_map(|l| {
                            let words: Vec<&str> = l.split_whitespace().collect();
                            (words.get(1) == Some(&id)).then(|| words[2].to_owned())
                        })
                        .unwrap_or_else(|| panic!("{id} is not listed:\n{out}"))
                };
                assert_eq!(
                    (state("C-1"), state("C-2")),
                    ("forwarded".into(), "rejected".into()),
                    "{out}"
                );
            }
            _ => panic!("a walk-through line this test does not know: {line}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 5, "the walk-through's lines changed:\n{looks}");
}
