//! The HTTP front door (SPEC §10) with Python `requests`: the operator API, tokens and bans
//! shared with SFTP, and a slow-loris peer.

use std::io::Read;
use std::time::Duration;

use crate::harness::*;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// An SFTP daemon with `tenants.d/*.toml` included and `[http]` on a free port.
fn daemon_with_http(extra_http: &str, extra_sftp: &str) -> (Daemon, u16) {
    let d = Daemon::with_sftp(extra_sftp);
    let port = free_port();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!(
            "include = [\"tenants.d/*.toml\"]\n{text}\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_tokens_file = \"admin.tokens\"\n{extra_http}\n"
        ),
    )
    .unwrap();
    std::fs::write(d.dir.path().join("admin.tokens"), format!("# ops\n{ADMIN_TOKEN}\n")).unwrap();
    (d, port)
}

fn wait_http(port: u16) {
    wait_for("the HTTP listener", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Runs a `requests` script with `BASE` and `ADMIN` set; returns its stdout, asserting exit 0.
fn requests(port: u16, script: &str) -> String {
    let prelude = format!(
        "import json, sys, requests\nBASE = 'http://127.0.0.1:{port}'\nADMIN = {{'Authorization': 'Bearer {ADMIN_TOKEN}'}}\n"
    );
    let out = python(&prelude, script, "requests");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_tenant_created_through_the_api_logs_in_over_sftp_at_once() {
    let (mut d, port) = daemon_with_http("", "");
    d.start();
    wait_http(port);
    let key = d.dir.path().join("newco_key");
    make_key(&key);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let script = format!(
        r#"
r = requests.get(BASE + '/api/admin/tenants')
assert r.status_code == 401, r.text
assert r.json()['status'] == 'error', r.text
r = requests.get(BASE + '/api/admin/tenants', headers={{'Authorization': 'Bearer not-the-token-at-all-xx'}})
assert r.status_code == 401, r.text
r = requests.get(BASE + '/api/admin/tenants', headers=ADMIN)
assert r.status_code == 200, r.text
assert [t['id'] for t in r.json()] == ['acme', 'beta'], r.text
new = {{'id': 'newco', 'authorized_keys': [{public:?}.strip()], 'timezone': 'Europe/Paris',
       'minute_allocation': 600, 'mapping': {{'conversation_id': 'CallID', 'agent': 'Agent', 'contact_time': 'Start', 'recording': 'File'}}}}
r = requests.post(BASE + '/api/admin/tenants', json=new, headers=ADMIN)
assert r.status_code == 201, r.text
created = r.json()
r = requests.post(BASE + '/api/admin/tenants', json=new, headers=ADMIN)
assert r.status_code == 409, r.text
r = requests.post(BASE + '/api/admin/tenants', json={{'authorized_keys': []}}, headers=ADMIN)
assert r.status_code == 400 and '`id`' in r.json()['error'], r.text
partial = dict(new, id='partial', mapping={{'conversation_id': 'CallID'}})
r = requests.post(BASE + '/api/admin/tenants', json=partial, headers=ADMIN)
assert r.status_code == 400, r.text
assert any('mapping.agent' in d for d in r.json()['details']), r.text
r = requests.get(BASE + '/api/admin/tenants/newco', headers=ADMIN)
assert r.status_code == 200 and r.json()['timezone'] == 'Europe/Paris' and r.json()['api'], r.text
r = requests.get(BASE + '/api/admin/tenants/nobody', headers=ADMIN)
assert r.status_code == 404, r.text
r = requests.get(BASE + '/api/openapi.json')
assert r.status_code == 200 and '/api/admin/tenants' in r.json()['paths'], r.text
r = requests.get(BASE + '/api/admin/status', headers=ADMIN)
assert r.status_code == 200 and 'tenants' in r.json(), r.text
print(json.dumps(created))
"#
    );
    let created: serde_json::Value = serde_json::from_str(&requests(port, &script)).unwrap();
    assert_eq!(created["sftp"]["username"], "newco");
    assert_eq!(created["sftp"]["port"], d.sftp_port);
    assert_eq!(created["api_token"].as_str().unwrap().len(), 43);
    let toml = std::fs::read_to_string(d.dir.path().join("tenants.d/newco.toml")).unwrap();
    assert!(
        toml.contains("timezone = \"Europe/Paris\"") && toml.contains("api_tokens_file = \"newco.tokens\""),
        "{toml}"
    );
    // In force when the answer came: the new tenant logs in over SFTP right away.
    let out = d.sftp_batch_with("newco", &key, "put /etc/hostname c1.wav\nls\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.drop_dir("newco").join("c1.wav").is_file());
    d.stop();
}

#[test]
fn wrong_tokens_ban_the_source_on_both_doors() {
    let (mut d, port) = daemon_with_http("", "max_auth_failures = 3\nban_time = \"10m\"\n");
    d.start();
    wait_http(port);
    let out = requests(
        port,
        r#"
for _ in range(3):
    r = requests.get(BASE + '/api/admin/status', headers={'Authorization': 'Bearer wrong-token-wrong-token-x'})
    assert r.status_code == 401, r.text
try:
    r = requests.get(BASE + '/api/admin/status', headers=ADMIN)
    print(r.status_code)
except requests.exceptions.ConnectionError:
    print('closed')
"#,
    );
    assert_eq!(
        out.trim(),
        "closed",
        "a banned source's next connection is closed, whatever its token"
    );
    // The same ban holds at the SFTP door, with a key that is the tenant's.
    let sftp = d.sftp_batch("acme", "acme", "ls\n");
    assert!(!sftp.status.success(), "SFTP login from a banned source must fail");
    assert!(d.log().contains("address banned after repeated failed logins (http)"));
    d.stop();
}

#[test]
fn a_slow_loris_is_closed_at_the_header_timeout_while_others_are_served() {
    let (mut d, port) = daemon_with_http("header_timeout = \"1s\"\n", "");
    d.start();
    wait_http(port);
    let mut loris = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut loris, b"GET /api/admin/status HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    // Served meanwhile (the positive barrier).
    requests(
        port,
        "r = requests.get(BASE + '/api/admin/status', headers=ADMIN)\nassert r.status_code == 200, r.text\n",
    );
    loris.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let read = loris.read_to_end(&mut answer);
    assert!(
        read.is_ok(),
        "the server closes the connection (not our read timeout): {read:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    d.stop();
}
