//! Tenant isolation (SPEC §8): what one tenant sends costs that tenant only. Each test has a
//! noisy tenant ("acme") and a quiet one ("beta"), and asserts the quiet one's conversation is
//! forwarded while the noisy one's work is still under way (a positive barrier: the noisy
//! work's start in the log, and its end not yet reached).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::*;
use crate::ops::next_message;

const T: Duration = Duration::from_secs(60);

/// "acme" and "beta", both with the usual mapping.
fn two_tenants() -> String {
    format!("{ACME}\n{}", ACME.replace("id = \"acme\"", "id = \"beta\""))
}

/// beta sends one conversation and it must be forwarded.
fn quiet_conversation(d: &Daemon, id: &str) {
    let name = format!("{id}.wav");
    d.put("beta", &name, &audio(id, 3000));
    d.put("beta", &format!("{id}.csv"), one_row_csv(id, &name).as_bytes());
    wait_for(&format!("beta's {id} to be forwarded"), T, || {
        d.forwarded().contains_key(id)
    });
}

fn wait_log(d: &Daemon, what: &str, needle: &str) {
    wait_for(what, T, || d.log().contains(needle));
}

/// The `[matching]` settings that let [`long_to_unpack`]'s zip in.
pub const ROOM_FOR_A_BIG_ZIP: &str = "[matching]\nzip_max_unpacked = \"1100MiB\"\nzip_max_ratio = 100000\n";

/// Writes a zip of 1 GiB of zeros in four entries to `path`: small to send, long to unpack.
pub fn long_to_unpack(path: &Path) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let chunk = vec![0u8; 1 << 20];
    for i in 0..4 {
        w.start_file(format!("z{i}.wav"), opts).unwrap();
        for _ in 0..256 {
            w.write_all(&chunk).unwrap();
        }
    }
    w.finish().unwrap();
}

#[test]
fn a_quiet_tenant_is_served_while_another_unpacks_a_zip_near_the_limit() {
    let mut d = Daemon::new("1h", &two_tenants()).with_replaced("[matching]\n", ROOM_FOR_A_BIG_ZIP);
    let zip_path = d.dir.path().join("big.zip");
    long_to_unpack(&zip_path);
    d.start();
    std::fs::rename(&zip_path, d.drop_dir("acme").join("big.zip")).unwrap();
    wait_log(&d, "acme's zip to be unpacking", "unpacking zip batch");
    quiet_conversation(&d, "B-1");
    // The log is written in order: beta's conversation went out while the unpack still ran.
    assert!(
        !d.log().contains("zip batch unpacked"),
        "the zip was unpacked before beta was served: nothing was shown"
    );
    wait_for("the zip's report", T, || {
        d.report("acme", "big.zip.report.csv").exists()
    });
    wait_for("the zip's entries to be recorded", T, || {
        let out = d.cli(&["status", "--json", "--tenant", "acme"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["tenants"]["acme"]["files_waiting"] == 4
    });
}

/// Column names as short as base 36 makes them, so 150,000 of them fit in a 1 MiB line.
fn short_name(mut i: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'k'];
    loop {
        out.push(digits[i % 36]);
        i /= 36;
        if i == 0 {
            break;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn a_quiet_tenant_is_served_while_another_sends_a_150000_column_csv() {
    let mut d = Daemon::new("1h", &two_tenants());
    let extra: Vec<String> = (0..150_000).map(short_name).collect();
    let mut csv = format!("{HEADER},{}\n", extra.join(","));
    let values = vec!["v"; 150_000].join(",");
    for i in 0..60 {
        csv.push_str(&format!(
            "{},{values}\n",
            csv_row(&format!("W-{i}"), &format!("w{i}.wav"))
        ));
    }
    let staged = d.dir.path().join("wide.csv");
    std::fs::write(&staged, &csv).unwrap();
    d.start();
    std::fs::rename(&staged, d.drop_dir("acme").join("wide.csv")).unwrap();
    wait_log(&d, "acme's wide CSV to be read", "reading metadata file");
    quiet_conversation(&d, "B-1");
    // The report is written as soon as the file is known (it says what is under way), so the
    // barrier is the log's line that ends the read, which must not be there yet.
    let wide_read = |log: &str| {
        log.lines()
            .any(|l| l.contains("file=\"wide.csv\"") && l.contains("metadata file read"))
    };
    assert!(
        !wide_read(&d.log()),
        "the wide CSV was read before beta was served: nothing was shown"
    );
    // The wide file itself is read, linearly, with every row waiting for its recording.
    let lines = {
        wait_for("the wide CSV's report", T, || {
            d.read_report("acme", "wide.csv.report.csv").len() == 60
        });
        d.read_report("acme", "wide.csv.report.csv")
    };
    assert!(lines.iter().all(|l| l[3] == "waiting"), "{:?}", &lines[..2]);
}

#[test]
fn renaming_folders_in_a_loop_rescans_that_tenant_only() {
    let metrics = free_port();
    let mut d = Daemon::new("1h", &two_tenants()).with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    // A folder worth scanning: 5,000 recordings waiting for their metadata.
    for i in 0..5000 {
        d.put("acme", &format!("pool/p{i}.wav"), format!("audio {i}").as_bytes());
    }
    d.put("acme", "a/one.wav", b"x");
    d.start();
    wait_for("acme's files to be recorded", T, || {
        let out = d.cli(&["status", "--json", "--tenant", "acme"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["tenants"]["acme"]["files_waiting"] == 5001 && v["tenants"]["acme"]["intake_queued"] == 0
    });
    let stop = Arc::new(AtomicBool::new(false));
    let root = d.drop_dir("acme");
    let renames = {
        let stop = stop.clone();
        // Bounded by time, not by count: a fast disk must not end the loop before beta is
        // served, and a failed test must not leave it running.
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < T {
                let (from, to) = if n.is_multiple_of(2) { ("a", "b") } else { ("b", "a") };
                std::fs::rename(root.join(from), root.join(to)).unwrap();
                n += 1;
            }
            n
        })
    };
    quiet_conversation(&d, "B-1");
    let still_renaming = !renames.is_finished();
    stop.store(true, Ordering::Relaxed);
    let n = renames.join().unwrap();
    assert!(still_renaming, "the loop ended ({n} renames) before beta was served");
    eprintln!("{n} renames while beta was served");
    let scans = |tenant: &str| {
        let (_, body) = http_get(metrics, "/metrics");
        sample(&body, &["dropsync_rescans_total", &format!("tenant=\"{tenant}\"")]).unwrap_or(0.0)
    };
    wait_for("acme's rescans to be counted", T, || scans("acme") >= 2.0);
    assert_eq!(scans("beta"), 1.0, "beta was rescanned because of acme's renames");
    assert!(
        scans("acme") < f64::from(n) / 2.0,
        "{} rescans for {n} renames: they did not coalesce",
        scans("acme")
    );
}

#[test]
fn long_names_get_their_reports_and_a_report_that_fails_stops_no_one() {
    let mut d = Daemon::new("1h", &two_tenants());
    d.start();
    // beta's report cannot be written: a folder, with a file in it, stands at its path.
    let blocker = d.report("beta", "blocked.csv.report.csv");
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    d.put("beta", "blocked.csv", one_row_csv("B-9", "b9.wav").as_bytes());
    wait_log(&d, "beta's report to fail", "cannot write report");
    // acme: a 240-byte metadata name, and a recording with a name of 255 bytes.
    let recording = format!("{}.wav", "r".repeat(251));
    let metadata = format!("{}.csv", "m".repeat(236));
    assert_eq!((recording.len(), metadata.len()), (255, 240));
    let a = audio("long", 2000);
    d.put("acme", &recording, &a);
    d.put("acme", &metadata, one_row_csv("L-1", &recording).as_bytes());
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["L-1"], &[(&recording, &a)]);
    assert_eq!(
        d.wait_report("acme", &format!("{metadata}.report.csv"), 1)[0],
        ["2", "L-1", recording.as_str(), "forwarded", ""]
    );
    wait_for("acme's files to be archived", T, || drop_files(&d, "acme").is_empty());
    // Once the way is clear, beta's report is written without a restart.
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(d.wait_report_any("beta", "blocked.csv.report.csv", 1)[0][3], "waiting");
    // A metadata name of 255 bytes has a report whose name is cut short, with a hash.
    let longest = format!("{}.csv", "n".repeat(251));
    d.put("acme", &longest, one_row_csv("L-2", "nothing.wav").as_bytes());
    wait_for("the 255-byte name's report", T, || {
        std::fs::read_dir(d.drop_dir("acme").join("reports"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("nnnn") && name.ends_with(".report.csv") && name.len() <= 255 && name.contains('~')
            })
    });
}

#[test]
fn formula_cells_come_back_neutralised() {
    let mut d = Daemon::new("1h", ACME);
    d.start();
    d.put(
        "acme",
        "evil.csv",
        format!("{HEADER}\n=HYPERLINK(\"http://x\"),,2019-05-03T09:27:23Z,@c1.wav\n").as_bytes(),
    );
    let lines = d.wait_report("acme", "evil.csv.report.csv", 1);
    assert_eq!(lines[0][1], "'=HYPERLINK(\"http://x\")");
    assert_eq!(lines[0][2], "'@c1.wav");
    assert_eq!(lines[0][3], "rejected");
}

#[test]
fn start_up_with_10000_files_waiting_is_ready_before_they_are_taken_in() {
    let mut d = Daemon::new("1h", ACME);
    for i in 0..10_000 {
        d.put("acme", &format!("c{i:05}.wav"), &audio(&i.to_string(), 4096));
    }
    let path = d.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    d.start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    next_message(&sock, "READY=1", T);
    let recorded = |d: &Daemon| {
        let out = d.cli(&["status", "--json", "--tenant", "acme"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["tenants"]["acme"]["files_waiting"].as_i64().unwrap_or(0)
    };
    let at_ready = recorded(&d);
    assert!(at_ready < 10_000, "all 10,000 files were taken in before READY");
    wait_for("the 10,000 files to be recorded", Duration::from_secs(300), || {
        recorded(&d) == 10_000
    });
    eprintln!("recorded at READY: {at_ready} of 10000");
}

#[test]
fn an_arrival_that_meets_a_locked_catalog_is_retried_without_a_restart() {
    let mut d = Daemon::new("1h", ACME).with_replaced(
        "state_dir = \"var\"\n",
        "state_dir = \"var\"\n[catalog]\nbusy_timeout = \"300ms\"\n",
    );
    d.start();
    let db = d.dir.path().join("var/dropsync.db");
    let mut holder = hold_write_lock(&db);
    let a = audio("c1", 2000);
    d.put("acme", "c1.wav", &a);
    d.put("acme", "batch.csv", one_row_csv("C-1", "c1.wav").as_bytes());
    wait_log(&d, "the locked catalog to fail intake", "database is locked");
    assert!(d.forwarded().is_empty());
    // Released: taken in and forwarded by the running daemon.
    holder.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["C-1"], &[("c1.wav", &a)]);
    assert!(d.is_running());
}

/// Another process that takes the catalog's write lock and keeps it until told on stdin.
fn hold_write_lock(db: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.readline()\n\
             c.execute('ROLLBACK')\n",
        ])
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

/// The hidden name an FTP pull of `path` from the source `key` is written under.
fn ftp_temp_name(key: &str, path: &str) -> String {
    format!(
        ".dropsync-pull-{}",
        &sha256_hex(format!("{key}\n{path}").as_bytes())[..16]
    )
}

#[test]
fn links_planted_in_a_drop_folder_cannot_redirect_ftp_pulls() {
    let mut ftp = crate::ftp::FtpServer::new(&[]);
    ftp.start();
    let mut d = crate::ftp::daemon_polling(&format!("ftp://calls@127.0.0.1:{}/", ftp.port), "");
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}\n[[tenants]]\nid = \"beta\"\n")).unwrap();
    d.start();
    wait_for("a first poll", T, || {
        crate::ftp::source_status(&d)["last_ok_at"].is_string()
    });
    let key = format!("acme {}", crate::ftp::source_status(&d)["url"].as_str().unwrap());
    // Another local writer plants links: where a pulled file's sub-folder would be, and at the
    // temp name a pull writes to; both lead out of the drop folder.
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let drop = d.drop_dir("acme");
    std::os::unix::fs::symlink(&outside, drop.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("stolen.wav"), drop.join(ftp_temp_name(&key, "c1.wav"))).unwrap();
    ftp.put("sub/s1.wav", &audio("s1", 5000));
    ftp.put("c1.wav", &audio("c1", 5000));
    let c2 = audio("c2", 5000);
    ftp.put("c2.wav", &c2);
    ftp.put("c2.csv", one_row_csv("C-2", "c2.wav").as_bytes());
    // The source's other files are pulled and forwarded; beta is served meanwhile.
    d.put("beta", "b1.wav", &audio("b1", 5000));
    d.put("beta", "b1.csv", beta_csv("B-1", "b1.wav").as_bytes());
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["C-2"], &[("c2.wav", &c2)]);
    let failed = |file: &str| {
        d.log()
            .lines()
            .any(|l| l.contains("could not pull") && l.contains(file) && l.contains("links are not followed"))
    };
    wait_for("c1.wav's pull to end", T, || {
        failed("c1.wav") || drop.join("c1.wav").exists()
    });
    assert_eq!(
        walk(&outside),
        Vec::<std::path::PathBuf>::new(),
        "written outside the drop folder"
    );
    assert!(!drop.join("c1.wav").exists());
    wait_for("sub/s1.wav's pull to fail with its reason", T, || failed("sub/s1.wav"));
    assert_eq!(walk(&outside), Vec::<std::path::PathBuf>::new());
}

/// acme's conversations per state, from `status --json`.
fn acme_states(d: &Daemon) -> serde_json::Map<String, serde_json::Value> {
    let out = d.cli(&["status", "--json", "--tenant", "acme"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["tenants"]["acme"]["states"].as_object().cloned().unwrap_or_default()
}

/// Forwarders take tenants in turn: beta's one call, sent once acme has a backlog of 3,000
/// conversations ready and going out, is forwarded while most of that backlog is still to go
/// (read the moment beta's metadata.json appears), not after all of it.
#[test]
fn a_quiet_tenants_call_is_forwarded_in_turn_with_anothers_backlog() {
    const BACKLOG: i64 = 3_000;
    let mut d = Daemon::new("1h", &two_tenants());
    // Staged before start-up, so that the start-up scan takes the backlog in at once: the
    // recordings first, then the CSV whose rows are all ready when it has been read.
    let mut csv = format!("{HEADER}\n");
    for i in 0..BACKLOG {
        d.put("acme", &format!("n{i}.wav"), &audio(&format!("n{i}"), 100));
        csv += &format!("{}\n", csv_row(&format!("N-{i}"), &format!("n{i}.wav")));
    }
    d.put("acme", "backlog.csv", csv.as_bytes());
    d.start();
    // Taking 3,000 files in is slow when the suite runs beside it; it is not what is measured.
    wait_for("acme's backlog to be read", Duration::from_secs(300), || {
        d.log().contains(&format!(
            "metadata file read accepted={BACKLOG} rejected=0 ready={BACKLOG}"
        ))
    });
    let name = "b-1.wav";
    d.put("beta", name, &audio("b-1", 3000));
    d.put("beta", "b-1.csv", one_row_csv("B-1", name).as_bytes());
    let doc = d.outbox().join("beta/2019/05/03/B-1/metadata.json");
    wait_for("beta's B-1 to be forwarded", T, || doc.exists());
    let states = acme_states(&d);
    let forwarded = states.get("forwarded").and_then(|n| n.as_i64()).unwrap_or(0);
    assert!(
        BACKLOG - forwarded >= BACKLOG / 4,
        "beta's call went out after all but {} of acme's {BACKLOG} conversations: {states:?}",
        BACKLOG - forwarded
    );
}
