//! Quotas and full disks (SPEC §8): an upload past a quota, or into a full file system, is
//! refused with a clear message and leaves nothing under its final name; another tenant goes
//! on meanwhile; everything recovers by itself once there is room again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn quotas_refuse_with_a_clear_message_and_recover_when_space_is_freed() {
    let mut d = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        "state_dir = \"var\"\n[limits]\nquota = { bytes = \"1 MiB\", files = 10, sessions = 2 }\n",
    );
    d.start();
    std::fs::write(d.dir.path().join("a.wav"), audio("a", 700 << 10)).unwrap();
    let out = d.sftp_batch("acme", "acme", "put a.wav\n");
    assert!(out.status.success(), "{}", stderr(&out));
    // Once a.wav is counted, 700 KiB more does not fit in 1 MiB.
    let mut refused = None;
    for n in 0..100 {
        let name = format!("b{n}.wav");
        std::fs::write(d.dir.path().join(&name), audio(&name, 700 << 10)).unwrap();
        let out = d.sftp_batch("acme", "acme", &format!("put {name}\n"));
        if !out.status.success() {
            refused = Some((name, stderr(&out)));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (name, err) = refused.expect("the byte quota never refused an upload");
    assert!(err.contains("Failure"), "{err}");
    assert!(!d.drop_dir("acme").join(&name).exists(), "{name} was kept");
    assert!(d.log().contains("quota exceeded: 1.0 MiB held (quota.bytes)"));
    // OpenSSH's client shows only the status code; paramiko shows the server's words.
    let out = d.paramiko(&format!(
        "t, s = connect()\ntry:\n    f = s.open('{name}', 'w')\n    f.write(open(os.path.join(DIR, '{name}'), 'rb').read())\n    \
         f.close()\n    print('accepted')\nexcept IOError as e:\n    print('refused:', e)\n"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused:") && text.contains("quota exceeded"),
        "{text}{}",
        stderr(&out)
    );
    // beta's quota is its own.
    std::fs::write(d.dir.path().join("q.wav"), audio("q", 700 << 10)).unwrap();
    std::fs::write(d.dir.path().join("q.csv"), beta_csv("Q-1", "q.wav")).unwrap();
    let out = d.sftp_batch("beta", "beta", "put q.wav\nput q.csv\n");
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("beta's call to be forwarded", T, || d.forwarded().contains_key("Q-1"));
    // Sessions: two at once, and a third is told why it is turned away.
    let out = d.paramiko(
        "t1, s1 = connect()\nt2, s2 = connect()\ntry:\n    t3, s3 = connect()\n    print('third session allowed')\n\
         except Exception as e:\n    print('refused:', e)\nt1.close(); t2.close()\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refused:"), "{text}{}", stderr(&out));
    assert!(d.log().contains("quota exceeded: 2 sessions at once (quota.sessions)"));
    // Room again: a.wav leaves the drop folder once its call is forwarded.
    std::fs::write(d.dir.path().join("a.csv"), one_row_csv("A-1", "a.wav")).unwrap();
    let out = d.sftp_batch("acme", "acme", "put a.csv\n");
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("A-1 to be forwarded", T, || d.forwarded().contains_key("A-1"));
    // The tenant deletes what got in before the quota knew of a.wav.
    let got_in: Vec<String> = drop_files(&d, "acme")
        .into_iter()
        .filter(|f| f.starts_with('b') && f.ends_with(".wav"))
        .collect();
    if !got_in.is_empty() {
        let rm: String = got_in.iter().map(|f| format!("rm {f}\n")).collect();
        let out = d.sftp_batch("acme", "acme", &rm);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    wait_for("an upload to fit again", T, || {
        let out = d.sftp_batch("acme", "acme", &format!("put {name}\n"));
        out.status.success()
    });
    assert!(d.drop_dir("acme").join(&name).is_file(), "{got_in:?}");
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount is missing");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the tests run as root): {}",
            stderr(&out)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` to the last byte with one file, returned.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last bytes a page at a time, until not one more fits.
    while f.write_all(&[0x5a]).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_leaves_nothing_half_written_and_the_daemon_recovers_by_itself() {
    let mut d = Daemon::with_sftp("");
    let _tmpfs = Tmpfs::mount(&d.dir.path().join("var"), "40m");
    d.start();
    // 60 MB into a 40 MB file system: the write fails midway; nothing may take its name.
    std::fs::write(d.dir.path().join("big.wav"), audio("big", 60 << 20)).unwrap();
    let out = d.sftp_batch("acme", "acme", "put big.wav\n");
    assert!(!out.status.success(), "a 60 MB upload into 40 MB succeeded");
    wait_log_contains(&d, "upload discarded");
    let left = |d: &Daemon| walk(&d.drop_dir("acme"));
    assert!(
        !left(&d)
            .iter()
            .any(|p| p.ends_with("big.wav") || p.to_string_lossy().contains(".dropsync-upload")),
        "{:?}",
        left(&d)
    );
    // A call staged on the same file system, then the disk filled to the last byte.
    let stage = d.dir.path().join("var/stage");
    std::fs::create_dir_all(&stage).unwrap();
    let c1 = audio("c1", 3000);
    std::fs::write(stage.join("c1.wav"), &c1).unwrap();
    std::fs::write(stage.join("c1.csv"), one_row_csv("C-1", "c1.wav")).unwrap();
    let ballast = fill(&d.dir.path().join("var"));
    // A small upload fails too, and leaves no empty file behind.
    std::fs::write(d.dir.path().join("small.wav"), audio("small", 3000)).unwrap();
    let out = d.sftp_batch("acme", "acme", "put small.wav\n");
    assert!(!out.status.success(), "an upload into a full disk succeeded");
    assert!(!d.drop_dir("acme").join("small.wav").exists(), "{:?}", left(&d));
    // Arrivals while the disk is full cannot be recorded; they must not be stranded.
    std::fs::rename(stage.join("c1.wav"), d.drop_dir("acme").join("c1.wav")).unwrap();
    std::fs::rename(stage.join("c1.csv"), d.drop_dir("acme").join("c1.csv")).unwrap();
    wait_log_contains(&d, "full");
    std::fs::remove_file(ballast).unwrap();
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["C-1"], &[("c1.wav", &c1)]);
    // beta was never stuck: its upload goes through now as on any day.
    std::fs::write(d.dir.path().join("b1.wav"), audio("b1", 3000)).unwrap();
    std::fs::write(d.dir.path().join("b1.csv"), beta_csv("B-1", "b1.wav")).unwrap();
    let out = d.sftp_batch("beta", "beta", "put b1.wav\nput b1.csv\n");
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_forwarded(2, T);
    assert!(d.is_running());
    assert_eq!(d.stop().code(), Some(0));
}

fn wait_log_contains(d: &Daemon, needle: &str) {
    wait_for(&format!("{needle:?} in the log"), T, || d.log().contains(needle));
}

/// A daemon with SFTP and `limits` (TOML lines of `[limits]`), its metrics on a free port.
fn limited(limits: &str) -> (Daemon, u16) {
    let metrics = free_port();
    let d = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        &format!("state_dir = \"var\"\n[limits]\n{limits}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    (d, metrics)
}

fn metric(port: u16, parts: &[&str]) -> f64 {
    sample(&http_get(port, "/metrics").1, parts).unwrap_or(0.0)
}

#[test]
fn temp_named_uploads_count_for_as_long_as_they_are_held() {
    let (mut d, metrics) = limited("quota = { bytes = \"10 MiB\" }");
    d.start();
    std::fs::write(d.dir.path().join("big"), audio("big", 4 << 20)).unwrap();
    let mut outcomes = Vec::new();
    for n in 1..=3 {
        let out = d.sftp_batch("acme", "acme", &format!("put big c{n}.wav.part\n"));
        outcomes.push((out.status.success(), stderr(&out)));
        // beta is served meanwhile, and acme's usage is refreshed from its folder before the
        // next upload: what a temp name holds must still count then.
        d.beta_uploads(&format!("B-{n}"));
        d.wait_forwarded(n, T);
        wait_for("acme's usage to be refreshed", T, || {
            metric(metrics, &["dropsync_tenant_held_bytes", "tenant=\"acme\""]) >= (n.min(2) * (4 << 20)) as f64
        });
    }
    assert!(outcomes[0].0 && outcomes[1].0, "{outcomes:?}");
    assert!(
        !outcomes[2].0,
        "a third 4 MiB upload fit in a 10 MiB quota: {outcomes:?}"
    );
    assert!(d.log().contains("quota exceeded: 10.0 MiB held (quota.bytes)"));
    let left = drop_files(&d, "acme");
    assert_eq!(left, ["c1.wav.part", "c2.wav.part"], "{left:?}");
    assert_eq!(metric(metrics, &["dropsync_tenant_held_files", "tenant=\"acme\""]), 2.0);
}

#[test]
fn uploads_that_never_finished_are_removed_once_stale() {
    let (mut d, metrics) = limited("stale_upload = \"12s\"");
    d.start();
    std::fs::write(d.dir.path().join("x.wav"), audio("x", 50_000)).unwrap();
    // Left by clients that never finished: a `.part`, a dot-file; and one of our own temp
    // files, as a cut leaves it (an FTP pull's partial download). An ordinary recording waits
    // for its metadata beside them.
    let out = d.sftp_batch(
        "acme",
        "acme",
        "put x.wav old.wav.part\nput x.wav .old.wav\nput x.wav keep.wav\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    d.put("acme", ".dropsync-ftp-0123456789abcdef.part", b"left by a cut");
    let removed = || metric(metrics, &["dropsync_stale_uploads_removed_total", "tenant=\"acme\""]);
    wait_for("three stale uploads to be removed", T, || removed() >= 3.0);
    assert_eq!(removed(), 3.0);
    assert!(d.log().contains("stale uploads removed"), "{}", d.log());
    // A fresh one stays, through a whole housekeeping pass that began after it came; beta is
    // served meanwhile.
    let out = d.sftp_batch("acme", "acme", "put x.wav fresh.wav.part\n");
    assert!(out.status.success(), "{}", stderr(&out));
    d.beta_uploads("B-1");
    let passes = metric(metrics, &["dropsync_housekeeping_passes_total"]);
    wait_for("two more housekeeping passes", T, || {
        metric(metrics, &["dropsync_housekeeping_passes_total"]) >= passes + 2.0
    });
    wait_for("beta's call", T, || d.forwarded().contains_key("B-1"));
    assert_eq!(drop_files(&d, "acme"), ["fresh.wav.part", "keep.wav"]);
    assert_eq!(removed(), 3.0);
}

#[test]
fn a_zip_is_unpacked_only_within_the_quota() {
    let (d, metrics) = limited("quota = { bytes = \"10 MiB\" }");
    let mut d = d.with_replaced("[matching]\n", "[matching]\nzip_max_ratio = 2000\n");
    // 12 MiB of zeros in three entries, a few KiB to send: the quota, not the ratio, stops it.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for i in 1..=3 {
        w.start_file(format!("z{i}.wav"), opts).unwrap();
        std::io::Write::write_all(&mut w, &vec![0u8; 4 << 20]).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
    std::fs::write(d.dir.path().join("bomb.zip"), &bytes).unwrap();
    d.start();
    let out = d.sftp_batch("acme", "acme", "put bomb.zip\n");
    assert!(out.status.success(), "{}", stderr(&out));
    d.beta_uploads("B-1");
    wait_for("the zip's report", T, || {
        d.report("acme", "bomb.zip.report.csv").exists()
    });
    let lines = d.read_report("acme", "bomb.zip.report.csv");
    assert!(
        lines.len() == 1
            && lines[0][3] == "rejected"
            && lines[0][4].contains("quota exceeded: 10.0 MiB held (quota.bytes)"),
        "{lines:?}; left in the drop folder: {:?}",
        drop_files(&d, "acme")
    );
    wait_for("beta's call", T, || d.forwarded().contains_key("B-1"));
    // Nothing of it stays, under any name, and nothing of it counts.
    wait_for("the zip to leave the drop folder", T, || {
        drop_files(&d, "acme").is_empty()
    });
    wait_for("acme's usage to be read again", T, || {
        metric(metrics, &["dropsync_tenant_held_files", "tenant=\"acme\""]) == 0.0
    });
    std::fs::write(d.dir.path().join("big.wav"), audio("big", 8 << 20)).unwrap();
    let out = d.sftp_batch("acme", "acme", "put big.wav\n");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_resumed_or_appended_upload_counts_its_file_once() {
    // One file and 10 MiB: a 6 MiB `.part` held, then continued by 3 MiB, must fit both.
    let (mut d, metrics) = limited("quota = { bytes = \"10 MiB\", files = 1 }");
    d.start();
    std::fs::write(d.dir.path().join("six"), audio("six", 6 << 20)).unwrap();
    let out = d.sftp_batch("acme", "acme", "put six c1.wav.part\n");
    assert!(out.status.success(), "{}", stderr(&out));
    // The walk of the folder has read it: it is what the quota counts now.
    wait_for("acme's usage to be read", T, || {
        metric(metrics, &["dropsync_tenant_held_bytes", "tenant=\"acme\""]) == (6 << 20) as f64
    });
    // Appended to (paramiko's 'a': OPEN without TRUNCATE) by 3 MiB, then by 512 KiB right
    // after its CLOSE: the kept upload counts its file once, not again beside the original.
    let out = d.paramiko(
        "t, s = connect()\nfor more in (3 << 20, 512 << 10):\n    try:\n        f = s.open('c1.wav.part', 'a')\n        \
         for i in range(0, more, 32768):\n            f.write(b'\\x01' * 32768)\n        f.close()\n        \
         print('appended', more)\n    except IOError as e:\n        print('refused:', e)\n\
         print('size', s.stat('c1.wav.part').st_size)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    d.beta_uploads("B-1");
    assert!(
        text.contains("appended 3145728") && text.contains("appended 524288") && !text.contains("refused"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains(&format!("size {}", (9 << 20) + (512 << 10))), "{text}");
    wait_for("beta's call", T, || d.forwarded().contains_key("B-1"));
    wait_for("acme's usage to be read again", T, || {
        metric(metrics, &["dropsync_tenant_held_bytes", "tenant=\"acme\""]) == ((9 << 20) + (512 << 10)) as f64
    });
    assert_eq!(metric(metrics, &["dropsync_tenant_held_files", "tenant=\"acme\""]), 1.0);
    assert_eq!(drop_files(&d, "acme"), ["c1.wav.part"]);
}
