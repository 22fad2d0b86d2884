//! sshfs, the usual way a Linux host mounts an SFTP drop folder: what `cp`, `rsync`, `cat >>`,
//! `dd`, `touch` and `mv` do through the mount arrives intact, and a file still open arrives only
//! once it is closed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// An sshfs mount of a tenant's drop folder, unmounted when dropped.
struct Mount {
    point: PathBuf,
    child: Child,
}

impl Mount {
    fn new(d: &Daemon, tenant: &str) -> Mount {
        let point = d.dir.path().join(format!("mnt-{tenant}"));
        std::fs::create_dir_all(&point).unwrap();
        let child = Command::new("sshfs")
            .arg("-f")
            .args(SSH_OPTS)
            .args(["-o", "BatchMode=yes", "-o", "dir_cache=no", "-p"])
            .arg(d.sftp_port.to_string())
            .arg("-o")
            .arg(format!("IdentityFile={}", d.key(tenant).display()))
            .arg(format!("{tenant}@127.0.0.1:/"))
            .arg(&point)
            .stdout(Stdio::null())
            .spawn()
            .expect("sshfs is missing: apt-get install sshfs (./scripts/test does)");
        let mut m = Mount { point, child };
        let deadline = Instant::now() + T;
        while !m.mounted() {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("sshfs exited with {status} before mounting; see its stderr above");
            }
            assert!(Instant::now() < deadline, "sshfs did not mount within {T:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let point = self.point.to_string_lossy().into_owned();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(point.as_str()))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.point.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.point)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a shell command line, asserting that it exits 0.
fn sh(dir: &Path, line: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: apt-get install {package} (./scripts/test does)"
    );
}

/// What users do through a mount (`cp`, `rsync`, `cat >>`, `dd`, `mv`, `touch`), each command's
/// exit code checked; every conversation
/// arrives byte-identical, and no empty or partial recording arrives. Another tenant is served
/// meanwhile, and the daemon stops within its drain deadline with the mount still up.
#[test]
fn cp_rsync_append_touch_and_mv_through_sshfs_arrive_intact() {
    need("rsync", "rsync");
    let mut d = Daemon::with_sftp("");
    d.start();
    let m = Mount::new(&d, "acme");
    let work = d.dir.path();
    let a: Vec<Vec<u8>> = (1..=5).map(|i| audio(&format!("fs{i}"), 300_000 + i * 1000)).collect();
    for (i, bytes) in a.iter().enumerate() {
        std::fs::write(work.join(format!("c{}.wav", i + 1)), bytes).unwrap();
    }
    let (head, tail) = a[2].split_at(100_000);
    std::fs::write(work.join("c3-head"), head).unwrap();
    std::fs::write(work.join("c3-tail"), tail).unwrap();
    let mnt = m.point.display().to_string();
    sh(work, &format!("cp c1.wav {mnt}/"));
    sh(work, &format!("rsync -t c2.wav {mnt}/"));
    sh(work, &format!("cp c3-head {mnt}/c3.wav && cat c3-tail >> {mnt}/c3.wav"));
    sh(
        work,
        &format!("dd if=c4.wav of={mnt}/c4.wav bs=64k conv=fsync status=none"),
    );
    sh(
        work,
        &format!("cp c5.wav {mnt}/c5.wav.tmp && mv {mnt}/c5.wav.tmp {mnt}/c5.wav"),
    );
    sh(work, &format!("touch -m -d @1500000000 {mnt}/c1.wav"));
    // `df` asks statvfs@openssh.com: the drop folder's file system, in 1K blocks.
    let df = String::from_utf8(sh(work, &format!("df -k {mnt}")).stdout).unwrap();
    let total: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0, "{df}");
    let listing = String::from_utf8(sh(work, &format!("ls {mnt}")).stdout).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names, ["c1.wav", "c2.wav", "c3.wav", "c4.wav", "c5.wav", "reports"]);
    assert_eq!(std::fs::metadata(m.path("c1.wav")).unwrap().len(), a[0].len() as u64);
    let rows: String = (1..=5)
        .map(|i| csv_row(&format!("FS-{i}"), &format!("c{i}.wav")) + "\n")
        .collect();
    std::fs::write(work.join("fs.csv"), format!("{HEADER}\n{rows}")).unwrap();
    sh(work, &format!("cp fs.csv {mnt}/"));

    // Beta, over OpenSSH's sftp meanwhile.
    let beta = d.beta_uploads("BS-1");

    let fwd = d.wait_forwarded(6, T);
    assert_recordings(&d, &fwd["BS-1"], &[("BS-1.wav", &beta)]);
    for (i, bytes) in a.iter().enumerate() {
        let name = format!("c{}.wav", i + 1);
        assert_recordings(&d, &fwd[&format!("FS-{}", i + 1)], &[(name.as_str(), bytes)]);
    }
    let lines = d.wait_report("acme", "fs.csv.report.csv", 5);
    assert!(lines.iter().all(|l| l[3] == "forwarded"), "{lines:?}");
    // Each recording arrived once, whole: never empty, never under a temp name.
    let log = d.log();
    for i in 1..=5 {
        let arrivals = log
            .matches(&format!(
                "file=\"c{i}.wav\" via=\"sftp\"}}: dropsync::intake: recording arrived"
            ))
            .count();
        assert!(arrivals >= 1, "c{i}.wav never arrived:\n{log}");
    }
    assert!(!log.contains("recording arrived bytes=0"), "{log}");
    assert!(
        !log.contains("c5.wav.tmp\" via=\"sftp\"}: dropsync::intake: recording"),
        "{log}"
    );
    assert_eq!(d.stop().code(), Some(0));
}

/// A file being written through the mount is seen there (its size grows) but does not arrive:
/// intake sees nothing until it is closed, while a file written after it arrives at once and
/// another tenant is served.
#[test]
fn a_file_open_in_sshfs_arrives_only_when_closed() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let m = Mount::new(&d, "acme");
    let bytes = audio("slow", 200_000);
    let script = format!(
        "import os, sys\nf = open({:?}, 'wb')\nf.write(open(sys.argv[1], 'rb').read())\nf.flush(); os.fsync(f.fileno())\n\
         print('half', flush=True)\nsys.stdin.readline()\nf.write(open(sys.argv[2], 'rb').read())\nf.close()\nprint('closed', flush=True)\n",
        m.path("slow.wav")
    );
    let (first, second) = bytes.split_at(120_000);
    std::fs::write(d.dir.path().join("first"), first).unwrap();
    std::fs::write(d.dir.path().join("second"), second).unwrap();
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(d.dir.path().join("first"))
        .arg(d.dir.path().join("second"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "half");
    // Seen through the mount, at its size so far.
    assert_eq!(std::fs::metadata(m.path("slow.wav")).unwrap().len(), 120_000);
    // A positive barrier: a file written after it has arrived.
    std::fs::write(m.path("after.wav"), audio("after", 1000)).unwrap();
    wait_for("after.wav to arrive", T, || {
        d.log()
            .contains("file=\"after.wav\" via=\"sftp\"}: dropsync::intake: recording arrived")
    });
    assert!(!d.log().contains("file=\"slow.wav\""), "{}", d.log());
    assert!(!d.drop_dir("acme").join("slow.wav").exists());
    // Beta is served meanwhile.
    let beta = d.beta_uploads("BO-1");
    assert_recordings(&d, &d.wait_forwarded(1, T)["BO-1"], &[("BO-1.wav", &beta)]);

    std::io::Write::write_all(writer.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    assert!(writer.wait().unwrap().success());
    std::fs::write(m.path("slow.csv"), one_row_csv("SL-1", "slow.wav")).unwrap();
    let fwd = d.wait_forwarded(2, T);
    assert_recordings(&d, &fwd["SL-1"], &[("slow.wav", &bytes)]);
    drop(m);
    assert_eq!(d.stop().code(), Some(0));
}
