//! SFTP file-system semantics on the real binary: what an append or a resume costs before it
//! starts, and renames that must not replace a file.

use std::time::Duration;

use crate::harness::*;
use crate::quota::Tmpfs;

const T: Duration = Duration::from_secs(60);

/// An append (or a resume) starts from a copy of what the file holds: that copy is counted
/// against the quota before any byte of it is made. So on a disk without room for the copy the
/// refusal is the quota's, and nothing is left behind; beta is served meanwhile.
#[test]
fn an_append_past_the_quota_is_refused_before_anything_is_copied() {
    let mut d = Daemon::with_sftp("").with_replaced(
        "state_dir = \"var\"\n",
        "state_dir = \"var\"\n[limits]\nquota = { bytes = \"10 MiB\" }\n",
    );
    let _tmpfs = Tmpfs::mount(&d.dir.path().join("var"), "12m");
    d.start();
    let big = audio("big", 6 << 20);
    std::fs::write(d.dir.path().join("big.wav"), &big).unwrap();
    let out = d.sftp_batch("acme", "acme", "put big.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Room on the disk for what an append adds, not for a second copy of the file.
    std::fs::write(d.dir.path().join("var/ballast"), vec![0u8; 4 << 20]).unwrap();
    let out = d.paramiko(
        "t, s = connect()\ntry:\n    f = s.open('big.wav', 'a')\n    print('opened')\n\
         except IOError as e:\n    print('refused:', e)\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused: quota exceeded: 10.0 MiB held (quota.bytes)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(d.drop_dir("acme"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.starts_with(".dropsync")), "{left:?}");
    assert_eq!(std::fs::read(d.drop_dir("acme").join("big.wav")).unwrap(), big);
    let beta = d.beta_uploads("AP-1");
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["AP-1"], &[("AP-1.wav", &beta)]);
}
