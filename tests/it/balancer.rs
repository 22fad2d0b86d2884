//! HAProxy in TCP mode in front of several nodes, as operators run SFTPGo's: one address per
//! door, each balanced round robin over the nodes' ports. No health checks (a check's bare TCP
//! connect would count as a failed SSH login); a refused connection to a dead node is sent to
//! the next one instead (`retries` with `option redispatch 1`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{free_port, wait_for};

pub struct Haproxy {
    _dir: tempfile::TempDir,
    child: Child,
}

impl Haproxy {
    /// Reserves one frontend port per door; [`Haproxy::start`] then takes the nodes' ports.
    pub fn ports(doors: usize) -> Vec<u16> {
        (0..doors).map(|_| free_port()).collect()
    }

    /// Starts HAProxy with frontend `ports[i]` balancing over `backends[i]`.
    pub fn start(ports: &[u16], backends: &[&[u16]]) -> Haproxy {
        assert_eq!(ports.len(), backends.len());
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from(
            "global\n  maxconn 512\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  \
             retries 3\n  option redispatch 1\n",
        );
        for (i, (port, servers)) in ports.iter().zip(backends).enumerate() {
            cfg += &format!("frontend door{i}\n  bind 127.0.0.1:{port}\n  default_backend nodes{i}\n");
            cfg += &format!("backend nodes{i}\n  balance roundrobin\n");
            for (n, s) in servers.iter().enumerate() {
                cfg += &format!("  server node{n} 127.0.0.1:{s}\n");
            }
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let bin = ["/usr/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let child = Command::new(bin.unwrap_or("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is missing: apt-get install haproxy (./scripts/test does)");
        for &port in ports {
            wait_for("HAProxy to listen", Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        Haproxy { _dir: dir, child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
