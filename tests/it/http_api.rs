//! The HTTP front door (SPEC §10) with Python `requests`: the operator API, tokens and bans
//! shared with SFTP, and a slow-loris peer.

use std::io::Read;
use std::time::Duration;

use crate::harness::*;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// An SFTP daemon with `tenants.d/*.toml` included and `[http]` on a free port.
pub fn daemon_with_http(extra_http: &str, extra_sftp: &str) -> (Daemon, u16) {
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

pub fn wait_http(port: u16) {
    wait_for("the HTTP listener", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Runs a `requests` script with `BASE` and `ADMIN` set; returns its stdout, asserting exit 0.
pub fn requests(port: u16, script: &str) -> String {
    let prelude = format!(
        "import json, sys, requests\nBASE = 'http://127.0.0.1:{port}'\nADMIN = {{'Authorization': 'Bearer {ADMIN_TOKEN}'}}\n"
    );
    python_ok(&prelude, script, "requests")
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

pub const ACME_TOKEN: &str = "acme-token-0123456789abcdef";
pub const BETA_TOKEN: &str = "beta-token-0123456789abcdef";

/// Like [`daemon_with_http`], with API tokens for acme and beta.
pub fn daemon_with_tenant_tokens(extra_http: &str) -> (Daemon, u16) {
    let (d, port) = daemon_with_http(extra_http, "");
    let d = d
        .with_replaced("id = \"acme\"\n", "id = \"acme\"\napi_tokens_file = \"acme.tokens\"\n")
        .with_replaced("id = \"beta\"\n", "id = \"beta\"\napi_tokens_file = \"beta.tokens\"\n");
    std::fs::write(d.dir.path().join("acme.tokens"), format!("{ACME_TOKEN}\n")).unwrap();
    std::fs::write(d.dir.path().join("beta.tokens"), format!("{BETA_TOKEN}\n")).unwrap();
    (d, port)
}

#[test]
fn one_call_at_a_time_metadata_then_recording_is_forwarded() {
    let (mut d, port) = daemon_with_tenant_tokens("upload_url_ttl = \"3s\"\n");
    d.start();
    wait_http(port);
    let wav = audio("api-call-1", 64_000);
    let wav_path = d.dir.path().join("call.wav");
    std::fs::write(&wav_path, &wav).unwrap();
    let script = format!(
        r#"
ACME = {{'Authorization': 'Bearer {ACME_TOKEN}'}}
BETA = {{'Authorization': 'Bearer {BETA_TOKEN}'}}
URL = BASE + '/api/v2/workspace/acme/conversation/upload_data/'
call = {{'call_date': '2024-08-06', 'call_time': '09:15:00', 'agent': 'ann@acme.example',
        'conversation_id': 'c-1', 'language': 'zu-ZA', 'direction': 'inbound'}}
r = requests.post(URL, json=call, headers=ACME)
assert r.status_code == 200, r.text
up = r.json()
assert up['conversation_id'] == 'c-1' and up['expires_in'] == 3, r.text
# As the platform's example does: a plain PUT of the file, no Authorization.
with open({wav:?}, 'rb') as f:
    r = requests.put(up['upload_url'], data=f)
assert r.status_code == 200, r.text
# Refusals: another tenant's token, missing fields, a changed URL, an expired one.
r = requests.post(URL, json=call, headers=BETA)
assert r.status_code == 403, r.text
r = requests.post(URL, json={{'agent': 'x', 'call_time': '25:00:00'}}, headers=ACME)
assert r.status_code == 400, r.text
details = ' '.join(r.json()['details'])
assert 'call_date: required' in details and 'call_time: not a time' in details, r.text
r = requests.post(URL, json=dict(call, conversation_id='c-2'), headers=ACME)
late = r.json()['upload_url']
r = requests.put(late.replace('signature=', 'signature=0'), data=b'RIFFxxxx')
assert r.status_code == 403 and 'signature' in r.json()['error'], r.text
r = requests.put(late.replace('/acme/', '/beta/'), data=b'RIFFxxxx')
assert r.status_code == 403, r.text
import time
time.sleep(3.5)
r = requests.put(late, data=b'RIFFxxxx')
assert r.status_code == 403 and 'expired' in r.json()['error'], r.text
print('ok')
"#,
        wav = wav_path.to_str().unwrap()
    );
    assert_eq!(requests(port, &script).trim(), "ok");
    let forwarded = d.wait_forwarded(1, Duration::from_secs(60));
    let doc = &forwarded["c-1"];
    assert_eq!(doc["agent"], "ann@acme.example", "{doc}");
    assert_eq!(doc["contact_time"].as_str().unwrap(), "2024-08-06T09:15:00Z", "{doc}");
    let rec = &doc["recordings"][0];
    let on_disk = std::fs::read(d.outbox().join(rec["key"].as_str().unwrap())).unwrap();
    assert_eq!(on_disk, wav);
    // The tenant sees it in its list; the expired upload left nothing behind.
    let listed = requests(
        port,
        &format!(
            "r = requests.get(BASE + '/api/v1/calls', headers={{'Authorization': 'Bearer {ACME_TOKEN}'}})\nassert r.status_code == 200, r.text\nprint(json.dumps(r.json()))\n"
        ),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], "c-1", "{listed}");
    assert_eq!(listed[0]["state"], "forwarded", "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    d.stop();
}

#[test]
fn an_over_quota_put_is_refused_while_another_tenant_is_served() {
    let (d, port) = daemon_with_tenant_tokens("");
    // acme's block ends where beta's begins.
    let mut d = d.with_replaced(
        "[[tenants]]\nid = \"beta\"",
        "[tenants.quota]\nbytes = \"100 KiB\"\n\n[[tenants]]\nid = \"beta\"",
    );
    d.start();
    wait_http(port);
    let big = d.dir.path().join("big.wav");
    std::fs::write(&big, audio("big", 1 << 20)).unwrap();
    let small = d.dir.path().join("small.wav");
    std::fs::write(&small, audio("small", 16_000)).unwrap();
    let script = format!(
        r#"
import threading
def ask(tenant, token, cid):
    r = requests.post(BASE + '/api/v2/workspace/%s/conversation/upload_data/' % tenant,
                      json={{'call_date': '2024-08-06', 'call_time': '09:15:00', 'agent': 'a', 'conversation_id': cid}},
                      headers={{'Authorization': 'Bearer ' + token}})
    assert r.status_code == 200, r.text
    return r.json()['upload_url']
big_url = ask('acme', {ACME_TOKEN:?}, 'big-1')
small_url = ask('beta', {BETA_TOKEN:?}, 'small-1')
results = {{}}
def put(name, url, path):
    with open(path, 'rb') as f:
        results[name] = requests.put(url, data=f)
t = threading.Thread(target=put, args=('big', big_url, {big:?}))
t.start()
put('small', small_url, {small:?})
t.join()
assert results['small'].status_code == 200, results['small'].text
assert results['big'].status_code == 403 and 'quota' in results['big'].json()['error'], results['big'].text
# A chat counts against the same quota.
long_chat = {{'chats': [{{'message': 'x' * 200000, 'time': '06/08/2024, 09:15', 'sender': 'user'}}],
             'metadata': {{'agent': 'a', 'date': '06/08/2024, 09:15'}}}}
r = requests.post(BASE + '/api/v1/chats', json=long_chat, headers={{'Authorization': 'Bearer ' + {ACME_TOKEN:?}}})
assert r.status_code == 403 and 'quota' in r.json()['error'], r.text
print('ok')
"#,
        big = big.to_str().unwrap(),
        small = small.to_str().unwrap()
    );
    assert_eq!(requests(port, &script).trim(), "ok");
    let forwarded = d.wait_forwarded(1, Duration::from_secs(60));
    assert!(forwarded.contains_key("small-1"), "{forwarded:?}");
    // Nothing of the refused upload is left in acme's folder.
    let left: Vec<String> = walk(&d.drop_dir("acme").join("api"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    d.stop();
}

#[test]
fn https_without_a_proxy_serves_curl_with_the_operators_certificate() {
    let (d, port) = daemon_with_http("tls_cert = \"http.crt\"\ntls_key = \"http.key\"\n", "");
    let (cert, key) = (d.dir.path().join("http.crt"), d.dir.path().join("http.key"));
    self_signed(&cert, &key);
    let mut d = d;
    d.start();
    wait_http(port);
    let curl_trusting = |trusted: &std::path::Path, extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(trusted)
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}/api/admin/tenants"))
            .output()
            .expect("curl is missing: apt-get install curl")
    };
    let curl = |extra: &[&str]| curl_trusting(&cert, extra);
    for version in ["--http1.1", "--http2"] {
        let out = curl(&[version]);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list[0]["id"], "acme", "{list}");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/api/admin/tenants"))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{}", String::from_utf8_lossy(&plain.stdout));

    // A renewed certificate is served after a SIGHUP, without a restart; one whose key is not
    // its own is refused, and the one in force stays.
    let first = d.dir.path().join("first.crt");
    std::fs::copy(&cert, &first).unwrap();
    let (renewed, renewed_key) = (d.dir.path().join("renewed.crt"), d.dir.path().join("renewed.key"));
    self_signed(&renewed, &renewed_key);
    std::fs::copy(&renewed, &cert).unwrap();
    assert!(d.signal(libc::SIGHUP));
    wait_for("the reload refused", Duration::from_secs(30), || {
        d.log().contains("do not go together")
    });
    assert!(
        curl_trusting(&first, &[]).status.success(),
        "the first certificate stays"
    );
    std::fs::copy(&renewed_key, &key).unwrap();
    assert!(d.signal(libc::SIGHUP));
    wait_for("the renewed certificate served", Duration::from_secs(30), || {
        curl_trusting(&renewed, &[]).status.success()
    });
    assert!(
        !curl_trusting(&first, &[]).status.success(),
        "the first certificate is no longer served"
    );
    d.stop();
}

/// A self-signed certificate for 127.0.0.1 and its key (P-256), made with openssl.
fn self_signed(cert: &std::path::Path, key: &std::path::Path) {
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl is missing: apt-get install openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

#[test]
fn a_presigned_form_post_stores_the_recording_and_a_changed_field_is_refused() {
    let (d, port) = daemon_with_tenant_tokens("");
    // beta's allocation is spent from the start.
    let mut d = d.with_replaced(
        "id = \"beta\"\napi_tokens_file",
        "id = \"beta\"\nminute_allocation = 0\napi_tokens_file",
    );
    d.start();
    wait_http(port);
    let wav = audio("vela-1", 48_000);
    let wav_path = d.dir.path().join("vela.wav");
    std::fs::write(&wav_path, &wav).unwrap();
    let script = format!(
        r#"
ACME = {{'Authorization': 'Bearer {ACME_TOKEN}'}}
BETA = {{'Authorization': 'Bearer {BETA_TOKEN}'}}
URL = BASE + '/asr/async/upload/vela'
meta = {{'email': 'ann@acme.example', 'date_of_call': '2024-08-06 09:15:00', 'conversation_id': 'v-1', 'queue': 'sales'}}
r = requests.post(URL, json={{'org_id': 'acme', 'metadata': meta}}, headers=ACME)
assert r.status_code == 200, (r.status_code, r.text)
p = r.json()
assert set(p['fields']) == {{'key', 'policy', 'x-amz-algorithm', 'x-amz-credential', 'x-amz-date', 'x-amz-signature'}}, r.text
# As the platform's example sends it: the fields as data, the file last.
with open({wav:?}, 'rb') as f:
    r = requests.post(p['url'], data=p['fields'], files={{'file': ('call.wav', f)}})
assert r.status_code == 204, r.text
# The same request as form fields, metadata as a JSON string.
r = requests.post(URL, data={{'org_id': 'acme', 'metadata': json.dumps(dict(meta, conversation_id='v-2'))}}, headers=ACME)
assert r.status_code == 200, r.text
q = r.json()
for name, value in [('key', 'acme/0000000000000000'), ('x-amz-date', '20240101T000000Z')]:
    fields = dict(q['fields'], **{{name: value}})
    r = requests.post(q['url'], data=fields, files={{'file': ('c.wav', b'RIFFxxxx')}})
    assert r.status_code == 403, (name, r.text)
import base64
policy = json.loads(base64.b64decode(q['fields']['policy']))
policy['conditions'][-1][2] = 10 ** 12
forged = base64.b64encode(json.dumps(policy).encode()).decode()
r = requests.post(q['url'], data=dict(q['fields'], policy=forged), files={{'file': ('c.wav', b'RIFFxxxx')}})
assert r.status_code == 403 and 'signature' in r.json()['error'], r.text
r = requests.post(q['url'], data=dict(q['fields'], extra='x'), files={{'file': ('c.wav', b'RIFFxxxx')}})
assert r.status_code == 403 and 'not in the policy' in r.json()['error'], r.text
# A field far past 64 KiB is refused as it comes, not read whole.
r = requests.post(q['url'], data=dict(q['fields'], policy='x' * (8 << 20)), files={{'file': ('c.wav', b'RIFFxxxx')}})
assert r.status_code == 400 and 'longer than' in r.json()['error'], r.text
# Another tenant's org_id; a spent allocation; a date that is not one.
r = requests.post(URL, json={{'org_id': 'beta', 'metadata': meta}}, headers=ACME)
assert r.status_code == 403, r.text
r = requests.post(URL, json={{'org_id': 'beta', 'metadata': meta}}, headers=BETA)
assert r.status_code == 403 and 'allocation' in r.json()['error'], r.text
r = requests.post(URL, json={{'org_id': 'acme', 'metadata': dict(meta, date_of_call='yesterday')}}, headers=ACME)
assert r.status_code == 400 and 'date_of_call' in ' '.join(r.json()['details']), r.text
print('ok')
"#,
        wav = wav_path.to_str().unwrap()
    );
    assert_eq!(requests(port, &script).trim(), "ok");
    let forwarded = d.wait_forwarded(1, Duration::from_secs(60));
    let doc = &forwarded["v-1"];
    assert_eq!(doc["agent"], "ann@acme.example", "{doc}");
    assert_eq!(doc["contact_time"], "2024-08-06T09:15:00Z", "{doc}");
    let rec = &doc["recordings"][0];
    assert_eq!(
        std::fs::read(d.outbox().join(rec["key"].as_str().unwrap())).unwrap(),
        wav
    );
    d.stop();
}

#[test]
fn a_batch_is_validated_before_it_is_queued_and_then_forwarded() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let (w1, w2) = (audio("batch-1", 24_000), audio("batch-2", 32_000));
    for (name, bytes) in [("b1.wav", &w1), ("b2.wav", &w2)] {
        std::fs::write(d.dir.path().join(name), bytes).unwrap();
    }
    let good_csv = format!("{HEADER}\n{}\n{}\n", csv_row("b-1", "b1.wav"), csv_row("b-2", "b2.wav"));
    let bad_csv = format!("{HEADER}\n{}\n", csv_row("b-3", "missing.wav"));
    let no_agent = "Contact Reference,Contact Date,Audio Filename\nb-4,2019-05-03T09:27:23Z,b1.wav\n";
    let script = format!(
        r#"
import io, zipfile
ACME = {{'Authorization': 'Bearer {ACME_TOKEN}'}}
def zip_of(entries):
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w') as z:
        for name, data in entries:
            z.writestr(name, data)
    return out.getvalue()
def batch(csv, zipped):
    r = requests.post(BASE + '/api/v1/calls/upload', json={{'metadata_filename': 'metadata.csv', 'audios_filename': 'audios.zip'}}, headers=ACME)
    assert r.status_code == 200 and r.json()['status'] == 'success', r.text
    data = r.json()['data']
    r = requests.put(data['metadata_upload_url'], data=csv.encode(), headers={{'Content-Type': 'text/csv'}})
    assert r.status_code == 200, r.text
    r = requests.put(data['audio_upload_url'], data=zipped, headers={{'Content-Type': 'application/zip'}})
    assert r.status_code == 200, r.text
    return requests.post(BASE + '/api/v1/calls/process-upload', json={{'metadata_key': data['metadata_key'], 'audios_key': data['audio_key']}}, headers=ACME)
w1, w2 = open({w1p:?}, 'rb').read(), open({w2p:?}, 'rb').read()
r = batch({bad_csv:?}, zip_of([('b1.wav', w1), ('sub/c9.wav', w1), ('notes.txt', b'x')]))
assert r.status_code == 422, r.text
details = r.json()['details']
assert any('sub/c9.wav' in d and 'folder' in d for d in details), details
assert any('notes.txt' in d and 'format' in d for d in details), details
assert any('missing.wav' in d and 'not in the zip' in d for d in details), details
r = batch({no_agent:?}, zip_of([('b1.wav', w1)]))
assert r.status_code == 422 and any('Agent Email' in d for d in r.json()['details']), r.text
r = batch({good_csv:?}, zip_of([('b1.wav', w1), ('b2.wav', w2)]))
assert r.status_code == 200, r.text
assert r.json()['data']['message'] == 'Files validated and queued for processing', r.text
r = requests.post(BASE + '/api/v1/calls/process-upload', json={{'metadata_key': 'beta/0123456789abcdef/metadata.csv', 'audios_key': 'beta/0123456789abcdef/audios.zip'}}, headers=ACME)
assert r.status_code == 404, r.text
print('ok')
"#,
        w1p = d.dir.path().join("b1.wav").to_str().unwrap(),
        w2p = d.dir.path().join("b2.wav").to_str().unwrap(),
    );
    assert_eq!(requests(port, &script).trim(), "ok");
    let forwarded = d.wait_forwarded(2, Duration::from_secs(60));
    for (id, bytes) in [("b-1", &w1), ("b-2", &w2)] {
        let rec = &forwarded[id]["recordings"][0];
        assert_eq!(
            &std::fs::read(d.outbox().join(rec["key"].as_str().unwrap())).unwrap(),
            bytes
        );
    }
    // The refused batches queued nothing: their rows were never read (after the good one's
    // two were forwarded, nothing else is in the catalog).
    let listed = requests(
        port,
        &format!(
            "r = requests.get(BASE + '/api/v1/calls', headers={{'Authorization': 'Bearer {ACME_TOKEN}'}})\nprint(json.dumps(sorted(c['id'] for c in r.json())))\n"
        ),
    );
    assert_eq!(listed.trim(), r#"["b-1", "b-2"]"#);
    d.stop();
}

#[test]
fn a_tenant_is_changed_given_a_key_and_removed_through_the_api() {
    let (mut d, port) = daemon_with_http("", "");
    d.start();
    wait_http(port);
    let (k1, k2) = (d.dir.path().join("k1"), d.dir.path().join("k2"));
    make_key(&k1);
    make_key(&k2);
    let public = |k: &std::path::Path| {
        std::fs::read_to_string(k.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let script = format!(
        r#"
new = {{'id': 'newco', 'authorized_keys': [{k1:?}], 'timezone': 'Europe/Paris', 'minute_allocation': 600}}
r = requests.post(BASE + '/api/admin/tenants', json=new, headers=ADMIN)
assert r.status_code == 201, r.text
token = r.json()['api_token']
r = requests.get(BASE + '/api/v1/calls', headers={{'Authorization': 'Bearer ' + token}})
assert r.status_code == 200 and r.json() == [], r.text
r = requests.post(BASE + '/api/admin/tenants/newco/keys', data={k2:?}, headers=dict(ADMIN, **{{'Content-Type': 'text/plain'}}))
assert r.status_code == 200 and r.json()['username'] == 'newco', r.text
r = requests.patch(BASE + '/api/admin/tenants/newco', json={{'timezone': 'UTC', 'minute_allocation': None}}, headers=ADMIN)
assert r.status_code == 200 and r.json()['timezone'] == 'UTC' and r.json()['minute_allocation'] is None, r.text
r = requests.patch(BASE + '/api/admin/tenants/newco', json={{'timezone': 'Mars/Base'}}, headers=ADMIN)
assert r.status_code == 400 and any('Mars/Base' in d for d in r.json()['details']), r.text
r = requests.get(BASE + '/api/admin/tenants/newco', headers=ADMIN)
assert r.json()['timezone'] == 'UTC' and len(r.json()['authorized_keys']) == 2, r.text
r = requests.patch(BASE + '/api/admin/tenants/acme', json={{'timezone': 'UTC'}}, headers=ADMIN)
assert r.status_code == 409, r.text
r = requests.patch(BASE + '/api/admin/tenants/newco', json={{'id': 'other'}}, headers=ADMIN)
assert r.status_code == 400, r.text
print(token)
"#,
        k1 = public(&k1),
        k2 = public(&k2),
    );
    let token = requests(port, &script).trim().to_owned();
    // Both keys log in.
    for key in [&k1, &k2] {
        let out = d.sftp_batch_with("newco", key, "ls\n");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let gone = format!(
        r#"
r = requests.delete(BASE + '/api/admin/tenants/newco', headers=ADMIN)
assert r.status_code == 204, r.text
r = requests.get(BASE + '/api/v1/calls', headers={{'Authorization': 'Bearer {token}'}})
assert r.status_code == 401, r.text
r = requests.get(BASE + '/api/admin/tenants', headers=ADMIN)
assert [t['id'] for t in r.json()] == ['acme', 'beta'], r.text
r = requests.delete(BASE + '/api/admin/tenants/acme', headers=ADMIN)
assert r.status_code == 409, r.text
print('ok')
"#
    );
    assert_eq!(requests(port, &gone).trim(), "ok");
    let out = d.sftp_batch_with("newco", &k1, "ls\n");
    assert!(!out.status.success(), "a removed tenant must not log in");
    assert!(!d.dir.path().join("tenants.d/newco.tokens").exists());
    d.stop();
}

/// Schemathesis generates requests from `/api/openapi.json`, with an admin and with a tenant's
/// token: no answer is a 5xx, and every answer's status and body are the ones described.
#[test]
fn every_answer_matches_the_openapi_description() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    for token in [ADMIN_TOKEN, ACME_TOKEN] {
        let out = std::process::Command::new("schemathesis")
            .args(["run", &format!("http://127.0.0.1:{port}/api/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance",
            ])
            .args(["--max-examples", "25", "--seed", "1"])
            .env("NO_COLOR", "1")
            // Its cache goes to the test's folder, not the repository.
            .current_dir(d.dir.path())
            .output()
            .expect("schemathesis is missing: pip install schemathesis (./scripts/test does)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "schemathesis with {token}:\n{text}");
        assert!(text.contains(" passed"), "{text}");
    }
    assert!(!d.log().contains("panicked"), "a handler panicked:\n{}", d.log());
    d.stop();
}

/// A 1 GiB recording PUT by curl, as a contact centre's script would send it: forwarded whole.
#[test]
fn curl_puts_a_1_gib_recording_to_its_upload_url() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let len: u64 = 1 << 30;
    let big = d.dir.path().join("big.wav");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        let data = (len - 44) as u32;
        f.write_all(b"RIFF").unwrap();
        f.write_all(&(36 + data).to_le_bytes()).unwrap();
        f.write_all(b"WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x40\x1f\0\0\x01\0\x08\0data")
            .unwrap();
        f.write_all(&data.to_le_bytes()).unwrap();
        f.set_len(len).unwrap();
    }
    let url = requests(
        port,
        &format!(
            "r = requests.post(BASE + '/api/v2/workspace/acme/conversation/upload_data/', json={{'call_date': '2024-08-06', 'call_time': '09:15:00', 'agent': 'a', 'conversation_id': 'big-1'}}, headers={{'Authorization': 'Bearer {ACME_TOKEN}'}})\nassert r.status_code == 200, r.text\nprint(r.json()['upload_url'])\n"
        ),
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "-T"])
        .arg(&big)
        .arg(url.trim())
        .output()
        .expect("curl is missing: apt-get install curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forwarded = d.wait_forwarded(1, Duration::from_secs(300));
    let rec = &forwarded["big-1"]["recordings"][0];
    assert_eq!(rec["bytes"], len);
    let sent = std::process::Command::new("sha256sum").arg(&big).output().unwrap();
    let sent = String::from_utf8_lossy(&sent.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(rec["sha256"], sent);
    let stored = d.outbox().join(rec["key"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), len);
    d.stop();
}

#[test]
fn a_sample_file_gets_a_suggested_mapping_as_a_body_or_a_form_field() {
    let (mut d, port) = daemon_with_http("", "");
    d.start();
    wait_http(port);
    let script = r#"
csv = 'Call Ref,Agent Email,Started,Audio\nc1,ann@acme.example,2024-08-06T09:15:00Z,c1.wav\nc2,bob@acme.example,2024-08-06T09:20:00Z,c2.wav\n'
for kw in [dict(data=csv.encode(), headers=dict(ADMIN, **{'Content-Type': 'text/csv'})),
           dict(files={'file': ('sample.csv', csv.encode(), 'text/csv')}, headers=ADMIN)]:
    r = requests.post(BASE + '/api/admin/tenants/acme/sample', **kw)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got['columns'] == ['Call Ref', 'Agent Email', 'Started', 'Audio'], got
    assert got['suggested_mapping'] == {'conversation_id': 'Call Ref', 'agent': 'Agent Email', 'contact_time': 'Started', 'recording': 'Audio'}, got
    assert any('Contact Reference' in p for p in got['problems']), got
r = requests.post(BASE + '/api/admin/tenants/nobody/sample', data=b'a,b\n', headers=ADMIN)
assert r.status_code == 404, r.text
print('ok')
"#;
    assert_eq!(requests(port, script).trim(), "ok");
    d.stop();
}

/// Python that sends acme's chat "chat-1" (`chats`, `meta`, `ACME` stay defined).
fn chat_1() -> String {
    format!(
        r#"
ACME = {{'Authorization': 'Bearer {ACME_TOKEN}'}}
chats = [{{'message': 'Sawubona', 'time': '06/08/2024, 09:15', 'sender': 'user', 'language': 'zu-ZA'}},
         {{'message': 'Hello, how can I help?', 'time': '06/08/2024, 09:16', 'sender': 'agent', 'language': 'en-ZA'}}]
meta = {{'agent': 'ann@acme.example', 'date': '06/08/2024, 09:15', 'conversation_id': 'chat-1', 'queue': 'sales'}}
r = requests.post(BASE + '/api/v1/chats', json={{'chats': chats, 'metadata': meta}}, headers=ACME)
assert r.status_code == 200, r.text
"#
    )
}

#[test]
fn chats_become_conversations_with_a_transcript_and_no_audio() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let key = d.dir.path().join("gamma_key");
    make_key(&key);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let wav = d.dir.path().join("call.wav");
    std::fs::write(&wav, audio("gamma-call", 16_000)).unwrap();
    let script = format!(
        r#"{CHAT_1}
assert r.json() == {{'conversation_id': 'chat-1'}}, r.text
# As the platform's example sends it: form fields, chats and metadata as JSON strings.
r = requests.post(BASE + '/api/v1/chats', headers=ACME,
                  data={{'chats': json.dumps(chats), 'metadata': json.dumps({{'agent': 'bob', 'date': '06/08/2024, 10:00'}})}})
assert r.status_code == 200, r.text
made = r.json()['conversation_id']
assert made.startswith('chat-'), r.text
# As multipart fields (requests' files=), past 2 MB: within the JSON limit, the form is read.
big = [{{'message': 'x' * 2500000, 'time': '06/08/2024, 09:15', 'sender': 'user'}}]
r = requests.post(BASE + '/api/v1/chats', headers=ACME,
                  files={{'chats': (None, json.dumps(big)), 'metadata': (None, json.dumps({{'agent': 'bob', 'date': '06/08/2024, 10:00', 'conversation_id': 'big-chat'}}))}})
assert r.status_code == 200 and r.json()['conversation_id'] == 'big-chat', r.text
# What is wrong is named, per message and field.
r = requests.post(BASE + '/api/v1/chats', headers=ACME,
                  json={{'chats': [{{'message': 'x', 'time': 'soon', 'sender': 'user'}}, {{'message': 'y', 'time': '06/08/2024, 09:15', 'sender': 'cat'}}],
                        'metadata': {{'date': '06/08/2024, 09:15'}}}})
assert r.status_code == 400, r.text
details = ' '.join(r.json()['details'])
assert 'chats[0].time' in details and 'chats[1].sender' in details and 'agent: required' in details, r.text
r = requests.post(BASE + '/api/v1/chats', headers=ACME, json={{'metadata': meta}})
assert r.status_code == 400 and 'chats: required' in ' '.join(r.json()['details']), r.text
r = requests.post(BASE + '/api/v1/chats', headers=ACME, data={{'chats': '[not json', 'metadata': json.dumps(meta)}})
assert r.status_code == 400 and 'chats: not JSON' in r.json()['error'], r.text
r = requests.post(BASE + '/api/v1/chats', json={{'chats': chats, 'metadata': meta}})
assert r.status_code == 401, r.text
# A tenant whose mapping finds recordings by conversation id, in Johannesburg (UTC+2).
new = {{'id': 'gamma', 'authorized_keys': [{public:?}.strip()], 'timezone': 'Africa/Johannesburg',
       'mapping': {{'conversation_id': 'Id', 'agent': 'Agent', 'contact_time': 'When'}}}}
r = requests.post(BASE + '/api/admin/tenants', json=new, headers=ADMIN)
assert r.status_code == 201, r.text
GAMMA = {{'Authorization': 'Bearer ' + r.json()['api_token']}}
r = requests.post(BASE + '/api/v1/chats', json={{'chats': chats, 'metadata': dict(meta, conversation_id='g-chat')}}, headers=GAMMA)
assert r.status_code == 200, r.text
r = requests.post(BASE + '/api/v1/chats', json={{'chats': chats, 'metadata': dict(meta, conversation_id='a/b')}}, headers=GAMMA)
assert r.status_code == 400 and 'cannot name a file' in r.json()['error'], r.text
# Its calls, too, are named so that its mapping finds them.
r = requests.post(BASE + '/api/v2/workspace/gamma/conversation/upload_data/', headers=GAMMA,
                  json={{'call_date': '2024-08-06', 'call_time': '09:15:00', 'agent': 'gil', 'conversation_id': 'g-call'}})
assert r.status_code == 200, r.text
with open({wav:?}, 'rb') as f:
    r = requests.put(r.json()['upload_url'], data=f)
assert r.status_code == 200, r.text
print(made)
"#,
        wav = wav.to_str().unwrap(),
        CHAT_1 = chat_1()
    );
    let made = requests(port, &script).trim().to_owned();
    let forwarded = d.wait_forwarded(5, Duration::from_secs(60));
    assert!(forwarded.contains_key("big-chat"), "{forwarded:?}");
    let doc = &forwarded["chat-1"];
    assert_eq!(doc["recordings"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["contact_time"], "2024-08-06T09:15:00Z", "{doc}");
    assert_eq!(doc["fields"]["queue"], "sales", "{doc}");
    let key = doc["transcript"]["key"].as_str().unwrap();
    assert!(key.ends_with("/2024/08/06/chat-1/transcript.json"), "{key}");
    let transcript: serde_json::Value = serde_json::from_slice(&std::fs::read(d.outbox().join(key)).unwrap()).unwrap();
    assert_eq!(transcript["conversation_id"], "chat-1");
    assert_eq!(
        transcript["messages"][0]["time"], "2024-08-06T09:15:00Z",
        "{transcript}"
    );
    assert_eq!(transcript["messages"][1]["message"], "Hello, how can I help?");
    assert_eq!(transcript["messages"][1]["language"], "en-ZA");
    assert_eq!(
        doc["transcript"]["sha256"],
        sha256_hex(&std::fs::read(d.outbox().join(key)).unwrap())
    );
    assert_eq!(forwarded[&made]["agent"], "bob");
    // The tenant's wall clock is UTC+2: 09:15 there is 07:15 UTC, in the key and the transcript.
    let g = &forwarded["g-chat"];
    assert_eq!(g["contact_time"], "2024-08-06T07:15:00Z", "{g}");
    let g_transcript: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.outbox().join(g["transcript"]["key"].as_str().unwrap())).unwrap())
            .unwrap();
    assert_eq!(g_transcript["messages"][0]["time"], "2024-08-06T07:15:00Z");
    assert_eq!(forwarded["g-call"]["recordings"][0]["file"], "g-call.wav");

    // Sent again: the same chat is a no-op; a changed one is forwarded again over the same keys.
    let resend = format!(
        r#"{CHAT_1}
import time
for _ in range(600):
    calls = requests.get(BASE + '/api/v1/calls', headers=ACME).json()
    if any('identical' in (c['detail'] or '') for c in calls if c['id'] == 'chat-1'):
        break
    time.sleep(0.1)
else:
    raise SystemExit('no identical re-send: %s' % calls)
chats[1]['message'] = 'Sawubona! How can I help?'
r = requests.post(BASE + '/api/v1/chats', json={{'chats': chats, 'metadata': meta}}, headers=ACME)
assert r.status_code == 200, r.text
print('ok')
"#,
        CHAT_1 = chat_1()
    );
    assert_eq!(requests(port, &resend).trim(), "ok");
    wait_for("the changed chat forwarded again", Duration::from_secs(60), || {
        std::fs::read_to_string(d.outbox().join(key)).is_ok_and(|t| t.contains("Sawubona! How"))
    });
    d.stop();
}
