//! SFTP file-system semantics on the real binary: what an append or a resume costs before it
//! starts, and renames that must not replace a file.

use std::time::Duration;

use crate::harness::*;
use crate::quota::Tmpfs;

const T: Duration = Duration::from_secs(60);

/// An append (or a resume) starts from a copy of what the file holds, which replaces it: the
/// file counts once, but an append by a tenant whose byte quota is spent is refused before any
/// byte of the copy is made. So on a disk without room for the copy the refusal is the quota's,
/// and nothing is left behind; beta is served meanwhile.
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
    std::fs::write(d.dir.path().join("fill.wav"), audio("fill", 4 << 20)).unwrap();
    // 10 MiB held: the quota is spent, and the disk has no room for a copy of big.wav.
    let out = d.sftp_batch("acme", "acme", "put big.wav\nput fill.wav\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

/// SFTP v3 RENAME never replaces a file: onto an existing name it fails with the failure status
/// and leaves both files as they were. That holds when another local writer creates the target
/// while the RENAME is under way, too: here a racer links and unlinks the target over and over
/// while the client renames onto it, retrying while refused. A file the client was told it
/// renamed must hold its bytes (replacing the racer's link would let the racer's unlink take
/// them). beta is served meanwhile.
#[test]
fn rename_never_replaces_a_file_even_one_that_appears_meanwhile() {
    let mut d = Daemon::with_sftp("");
    d.start();
    let out = d.paramiko(
        r#"
import threading
root = os.path.join(DIR, 'var', 'drop', 'acme')
t, s = connect()
with s.open('x.tmp', 'w') as f: f.write(b'x')
with s.open('y.tmp', 'w') as f: f.write(b'y')
try:
    s.rename('x.tmp', 'y.tmp')
    print('replaced')
except IOError as e:
    print('refused:', e)
print('x', s.open('x.tmp').read(), 'y', s.open('y.tmp').read())
R = os.path.join(root, 'racer.tmp')
open(R, 'wb').write(b'racer')
lost = []
for i in range(40):
    a, b = 'a%d.tmp' % i, 'b%d.tmp' % i
    B = os.path.join(root, b)
    with s.open(a, 'w') as f: f.write(b'A%d' % i)
    stop = threading.Event()
    def race():
        while not stop.is_set():
            try:
                os.link(R, B)
            except FileExistsError:
                return
            os.unlink(B)
    racer = threading.Thread(target=race)
    racer.start()
    while True:
        try:
            s.rename(a, b)
            break
        except IOError:
            pass
    stop.set()
    racer.join()
    if not os.path.exists(B) or open(B, 'rb').read() != b'A%d' % i:
        lost.append(i)
print('lost', lost)
"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("refused: /y.tmp: already exists"), "{text}{err}");
    assert!(text.contains("x b'x' y b'y'"), "{text}{err}");
    assert!(text.contains("lost []"), "{text}{err}");
    let beta = d.beta_uploads("RN-1");
    let fwd = d.wait_forwarded(1, T);
    assert_recordings(&d, &fwd["RN-1"], &[("RN-1.wav", &beta)]);
}
