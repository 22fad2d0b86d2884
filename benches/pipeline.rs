//! Pipeline benchmark (run on demand, release build):
//!
//!     cargo bench --bench pipeline -- [--conversations N] [--rows-million M]
//!
//! 1. N conversations (default 100,000; 1 KiB recordings, already arrived) through the real
//!    daemon: time from the metadata file's arrival until all N are forwarded to the dir sink,
//!    and the daemon's peak RSS.
//! 2. Streaming parse + validation of a 100k-row and an M-million-row CSV (default 1) in a child
//!    process each: rows/s and peak RSS, to show memory does not grow with the file.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{arg, status_json, wait};

const BIN: &str = env!("CARGO_BIN_EXE_dropsync");
const HEADER: &str = "Contact Reference,Agent Email,Contact Date,Audio Filename,Queue,Notes";

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn row(i: usize) -> String {
    format!(
        "C-{i:07},agent{}@acme.example,2019-05-03T09:{:02}:{:02}Z,c{i:07}.wav,sales,\"note, with a comma\"\n",
        i % 97,
        (i / 60) % 60,
        i % 60
    )
}

fn status_count(config: &Path, state: &str) -> (i64, i64) {
    let v = status_json(config);
    let t = &v["tenants"]["acme"];
    (
        t["states"][state].as_i64().unwrap_or(0),
        t["files_waiting"].as_i64().unwrap_or(0),
    )
}

fn pipeline(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dropsync.toml");
    std::fs::write(
        &config,
        "state_dir = \"var\"\n[sink]\ntype = \"dir\"\npath = \"var/outbox\"\n[[tenants]]\nid = \"acme\"\n\
         [tenants.mapping]\nconversation_id = \"Contact Reference\"\nagent = \"Agent Email\"\n\
         contact_time = \"Contact Date\"\nrecording = \"Audio Filename\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let drop = dir.path().join("var/drop/acme");
    wait("the daemon", Duration::from_secs(30), || drop.is_dir());

    // 1 KiB WAV files (8 kHz, 8-bit mono, 980 bytes of samples: 123 ms), which intake probes for their duration.
    let mut audio =
        b"RIFF\xf8\x03\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x40\x1f\0\0\x01\0\x08\0data\xd4\x03\0\0".to_vec();
    audio.resize(1024, 0x55);
    let t = Instant::now();
    for i in 0..n {
        let mut a = audio.clone();
        a[44..52].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(drop.join(format!("c{i:07}.wav")), &a).unwrap();
    }
    wait("recordings to arrive", Duration::from_secs(3600), || {
        status_count(&config, "forwarded").1 as usize >= n
    });
    let arrival = t.elapsed();

    let mut csv = String::with_capacity(n * 100);
    csv.push_str(HEADER);
    csv.push('\n');
    for i in 0..n {
        csv.push_str(&row(i));
    }
    let t0 = Instant::now();
    std::fs::write(drop.join("batch.csv"), csv).unwrap();
    wait("conversations to be forwarded", Duration::from_secs(3600), || {
        status_count(&config, "forwarded").0 as usize >= n
    });
    let took = t0.elapsed();
    let rss = peak_rss_kib(child.id());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    println!(
        "pipeline: {n} recordings arrived in {:.1} s ({:.0} files/s); {n} conversations from metadata arrival to forwarded in {:.1} s = {:.0} conversations/s; daemon peak RSS {:.1} MiB",
        arrival.as_secs_f64(),
        n as f64 / arrival.as_secs_f64(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss as f64 / 1024.0
    );
}

/// Child mode: parse and validate one CSV, print rows, seconds and peak RSS.
fn parse_only(path: &Path) {
    use dropsync::matching::{self, MetadataFormat, RowContext, RowVerdict};
    let mapping = dropsync::tenant::Mapping {
        conversation_id: Some("Contact Reference".into()),
        agent: "Agent Email".into(),
        time: dropsync::tenant::TimeColumns::Single {
            column: "Contact Date".into(),
            format: None,
        },
        recording: Some("Audio Filename".into()),
        required_columns: vec![],
    };
    let exts: Vec<String> = dropsync::config::DEFAULT_RECORDING_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    let file = std::fs::File::open(path).unwrap();
    matching::read_rows::<_, ()>(MetadataFormat::Csv, std::io::BufReader::new(file), 1 << 20, |r| {
        let ctx = RowContext {
            mapping: &mapping,
            timezone: chrono_tz::UTC,
            extensions: &exts,
            file_stem: "b",
            first_row: false,
        };
        match r.record.map(|rec| matching::map_row(&ctx, rec)) {
            Ok(RowVerdict::Accepted(_)) => ok += 1,
            _ => bad += 1,
        }
        Ok(())
    })
    .unwrap();
    println!(
        "{} {} {:.3} {}",
        ok,
        bad,
        t.elapsed().as_secs_f64(),
        peak_rss_kib(std::process::id())
    );
}

fn parse(rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "{HEADER}").unwrap();
    for i in 0..rows {
        f.write_all(row(i).as_bytes()).unwrap();
    }
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--parse-only")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (ok, secs, rss): (u64, f64, u64) = (
        parts[0].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
    );
    println!(
        "parse: {rows} rows ({:.0} MiB CSV): {ok} accepted in {secs:.2} s = {:.0} rows/s; peak RSS {:.1} MiB",
        size as f64 / 1048576.0,
        rows as f64 / secs,
        rss as f64 / 1024.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--parse-only") {
        parse_only(Path::new(&args[i + 1]));
        return;
    }
    // `cargo bench` passes --bench; ignore it.
    parse(100_000);
    parse(arg("--rows-million", 1) * 1_000_000);
    pipeline(arg("--conversations", 100_000));
}
