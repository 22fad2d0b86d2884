//! Java clients of the JSch 0.1.5x generation (Debian's `libjsch-java`, embedded in many Java
//! applications): they know ECDSA and SHA-1 RSA host keys only, and ECDSA user keys only in PEM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const JSCH_JAR: &str = "/usr/share/java/jsch.jar";

/// Uploads `c1.wav`; sends half of `c2.wav`, disconnects, and resumes the rest in a new session
/// (`ChannelSftp.RESUME`); then uploads `batch.csv`. Args: port, private key, local folder.
const UPLOAD_JAVA: &str = r#"
import com.jcraft.jsch.*;
import java.io.*;
import java.nio.file.*;

public class Upload {
    // A JSch of its own per session: JSch 0.1.55 signs with an ECDSA identity correctly only
    // the first time (its later signatures fail OpenSSL's check too), so a second session on
    // the same JSch object gets "Auth fail" from any server, for some keys.
    static Session session(String key, int port) throws JSchException {
        JSch jsch = new JSch();
        jsch.addIdentity(key);
        Session s = jsch.getSession("acme", "127.0.0.1", port);
        s.setConfig("StrictHostKeyChecking", "no");
        s.connect(30000);
        return s;
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        Path dir = Paths.get(args[2]);

        Session s = session(args[1], port);
        ChannelSftp c = (ChannelSftp) s.openChannel("sftp");
        c.connect(30000);
        c.put(dir.resolve("c1.wav").toString(), "c1.wav");
        byte[] whole = Files.readAllBytes(dir.resolve("c2.wav"));
        c.put(new ByteArrayInputStream(whole, 0, whole.length / 2), "c2.wav");
        c.disconnect();
        s.disconnect();

        s = session(args[1], port);
        c = (ChannelSftp) s.openChannel("sftp");
        c.connect(30000);
        long had = c.stat("c2.wav").getSize();
        System.out.println("resuming after " + had);
        c.put(dir.resolve("c2.wav").toString(), "c2.wav", ChannelSftp.RESUME);
        c.put(dir.resolve("batch.csv").toString(), "batch.csv");
        c.disconnect();
        s.disconnect();
        System.out.println("done");
    }
}
"#;

/// Compiles [`UPLOAD_JAVA`] into `dir`.
fn compile(dir: &Path) {
    assert!(
        Path::new(JSCH_JAR).is_file(),
        "{JSCH_JAR} is missing: apt-get install libjsch-java (./scripts/test does)"
    );
    std::fs::write(dir.join("Upload.java"), UPLOAD_JAVA).unwrap();
    let out = Command::new("javac")
        .args(["-cp", JSCH_JAR, "-d"])
        .arg(dir)
        .arg(dir.join("Upload.java"))
        .output()
        .expect("javac is missing: apt-get install default-jdk-headless (./scripts/test does)");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn jsch_0_1_55_logs_in_with_ecdsa_uploads_and_resumes_on_the_default_config() {
    let mut d = Daemon::with_sftp("");
    let dir = d.dir.path().to_path_buf();
    // JSch 0.1.55 reads an ECDSA key only in PEM.
    let key = dir.join("acme_ecdsa");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-b", "256", "-m", "PEM", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(key.with_extension("pub"), dir.join("acme_key.pub")).unwrap();
    let c1 = audio("jsch-1", 40_000);
    let c2 = audio("jsch-2", 300_001);
    std::fs::write(dir.join("c1.wav"), &c1).unwrap();
    std::fs::write(dir.join("c2.wav"), &c2).unwrap();
    let csv = format!("{HEADER}\n{}\n{}\n", csv_row("J-1", "c1.wav"), csv_row("J-2", "c2.wav"));
    std::fs::write(dir.join("batch.csv"), csv).unwrap();
    compile(&dir);
    d.start();

    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{JSCH_JAR}", dir.display()))
        .arg("Upload")
        .arg(d.sftp_port.to_string())
        .arg(&key)
        .arg(&dir)
        .output()
        .expect("java is missing: apt-get install default-jdk-headless (./scripts/test does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "JSch exited {:?}:\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("resuming after {}", c2.len() / 2)), "{stdout}");
    assert!(stdout.lines().any(|l| l == "done"), "{stdout}");
    // beta is served meanwhile.
    let b = d.beta_uploads("B-1");
    let forwarded = d.wait_forwarded(3, Duration::from_secs(60));
    assert_recordings(&d, &forwarded["J-1"], &[("c1.wav", &c1)]);
    assert_recordings(&d, &forwarded["J-2"], &[("c2.wav", &c2)]);
    assert_recordings(&d, &forwarded["B-1"], &[("B-1.wav", &b)]);
    let report = d.wait_report("acme", "batch.csv.report.csv", 2);
    assert!(report.iter().all(|l| l[3] == "forwarded"), "{report:?}");
}
