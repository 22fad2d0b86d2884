//! The web console (SPEC §11) in real headless Chromium, driven with Selenium: onboarding
//! through the wizard then an SFTP upload shown on the Calls page, a zip batch uploaded from the
//! page, one tenant kept from another's calls and recordings, forms refused without their CSRF
//! token, and axe-core run in every page (no serious or critical violation). Every page is
//! photographed at 1280×800 and 390×844 into `target/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;
use crate::http_api::{ACME_TOKEN, ADMIN_TOKEN, BETA_TOKEN, daemon_with_tenant_tokens, requests, wait_http};

fn axe_source() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-peers/node_modules/axe-core/axe.min.js");
    assert!(
        path.is_file(),
        "axe-core is missing: npm install --prefix target/test-peers axe-core@4 (./scripts/test does)"
    );
    path
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Python that starts headless Chromium (`driver`) and defines `login(token)`, `shoot(name)`
/// (both sizes), `axe()` (asserts no serious or critical violation) and `visit(path, name)`.
fn browser(port: u16) -> String {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (./scripts/test does)"
        );
    }
    let profile = tempfile::tempdir().unwrap().keep();
    format!(
        r#"
import json, os, sys, time
os.environ['SE_OFFLINE'] = 'true'
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait, Select
from selenium.common.exceptions import StaleElementReferenceException
BASE = 'http://127.0.0.1:{port}'
options = webdriver.ChromeOptions()
options.binary_location = '/usr/bin/chromium'
for flag in ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync',
             '--disable-dev-shm-usage', '--user-data-dir={profile}', '--window-size=1280,800']:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=options)
driver.set_script_timeout(60)
AXE = open({axe:?}).read()
SHOTS = {shots:?}
def axe():
    driver.execute_script(AXE)
    found = driver.execute_async_script('''
        const done = arguments[arguments.length - 1];
        axe.run(document, {{resultTypes: ['violations']}}).then(r => done(r.violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))));''')
    assert not found, (driver.current_url, found)
def shoot(name):
    for (w, h, size) in [(1280, 800, 'desktop'), (390, 844, 'phone')]:
        driver.set_window_size(w, h)
        driver.save_screenshot(os.path.join(SHOTS, '%s-%s.png' % (name, size)))
        if size == 'phone':
            wide = driver.execute_script('return document.documentElement.scrollWidth > window.innerWidth + 1 && !document.querySelector(".scroll")')
            assert not wide, 'the page scrolls sideways at phone width: ' + name
    driver.set_window_size(1280, 800)
def visit(path, name):
    driver.get(BASE + path)
    axe()
    shoot(name)
def login(token):
    driver.delete_all_cookies()
    driver.get(BASE + '/console/login')
    driver.find_element(By.ID, 'token').send_keys(token)
    driver.find_element(By.CSS_SELECTOR, 'form button').click()
    WebDriverWait(driver, 20).until(lambda d: '/console/login' not in d.current_url)
try:
"#,
        axe = axe_source().to_str().unwrap(),
        shots = screenshots().to_str().unwrap(),
        profile = profile.display()
    )
}

/// Runs `body` (Python, indented by four) in the browser; its stdout.
fn in_browser(port: u16, body: &str) -> String {
    let script = format!("{body}\nfinally:\n    driver.quit()\n");
    python_ok(&browser(port), &script, "selenium")
}

#[test]
fn an_operator_onboards_a_tenant_whose_sftp_upload_then_shows_on_the_calls_page() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let sample = d.dir.path().join("sample.csv");
    std::fs::write(
        &sample,
        "Call Ref,Agent Email,Started,Audio,Queue\n\
         c1,ann@newco.example,2024-08-06T09:15:00Z,c1.wav,sales\n\
         c2,bob@newco.example,06/08/2024 09:20,c2.wav,sales\n",
    )
    .unwrap();
    let key = d.dir.path().join("newco_key");
    make_key(&key);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let body = format!(
        r#"
    driver.get(BASE + '/console/tenants')
    assert '/console/login' in driver.current_url
    visit('/console/login', 'sign-in')
    login({ADMIN_TOKEN:?})
    visit('/console/tenants', 'tenants')
    visit('/console/onboard', 'onboard-sample')
    driver.find_element(By.ID, 'file').send_keys({sample:?})
    driver.find_element(By.CSS_SELECTOR, 'main form button').click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, 'contact_time'))
    # The columns that fit come first; what does not fit is said beside the field.
    time_options = [o.get_attribute('value') for o in Select(driver.find_element(By.ID, 'contact_time')).options]
    assert time_options[0] == 'Started', time_options
    note = driver.find_element(By.ID, 'contact_time-note').text
    assert 'Started: row 3 is not an ISO 8601 date-time' in note, note
    assert Select(driver.find_element(By.ID, 'recording')).first_selected_option.get_attribute('value') == 'Audio'
    axe()
    shoot('onboard-mapping')
    driver.find_element(By.ID, 'id').send_keys('newco')
    driver.find_element(By.ID, 'key').send_keys({public:?}.strip())
    driver.find_element(By.XPATH, '//button[text()="Generate SFTP credentials"]').click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, 'username'))
    assert driver.find_element(By.ID, 'username').text == 'newco'
    fingerprints = [e.text for e in driver.find_elements(By.CSS_SELECTOR, 'code.fingerprint')]
    assert fingerprints and all(f.startswith('SHA256:') for f in fingerprints), fingerprints
    axe()
    shoot('onboard-credentials')
    driver.find_element(By.ID, 'retention').send_keys('30d')
    driver.find_element(By.ID, 'minute_allocation').send_keys('600')
    driver.find_element(By.XPATH, '//button[text()="Save and finish"]').click()
    WebDriverWait(driver, 20).until(lambda d: d.current_url.endswith('/console/tenants/newco'))
    # The mapping is edited on the tenant's page: its files name recordings in "File" from now on.
    field = driver.find_element(By.ID, 'm-recording')
    assert field.get_attribute('value') == 'Audio'
    field.clear()
    field.send_keys('File')
    driver.find_element(By.XPATH, '//button[text()="Save the mapping"]').click()
    # The page re-renders the form as it settles: an element found just before may be gone.
    WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException]).until(lambda d: d.find_element(By.ID, 'm-recording').get_attribute('value') == 'File')
    print(json.dumps(fingerprints))
"#,
        sample = sample.to_str().unwrap(),
    );
    let fingerprints = in_browser(port, &body);
    assert!(fingerprints.contains("SHA256:"), "{fingerprints}");
    let toml = std::fs::read_to_string(d.dir.path().join("tenants.d/newco.toml")).unwrap();
    assert!(
        toml.contains("retention = \"30d\"") && toml.contains("minute_allocation = 600"),
        "{toml}"
    );
    assert!(
        toml.contains("contact_time = \"Started\"") && toml.contains("recording = \"File\""),
        "{toml}"
    );

    // The new tenant uploads over SFTP with the key pasted in the wizard.
    let wav = audio("newco-c1", 48_000);
    std::fs::write(d.dir.path().join("c1.wav"), &wav).unwrap();
    std::fs::write(
        d.dir.path().join("calls.csv"),
        "Call Ref,Agent Email,Started,File,Queue\nc1,ann@newco.example,2024-08-06T09:15:00Z,c1.wav,sales\n",
    )
    .unwrap();
    let local = d.dir.path();
    let out = d.sftp_batch_with(
        "newco",
        &key,
        &format!("put {0}/c1.wav c1.wav\nput {0}/calls.csv calls.csv\n", local.display()),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_forwarded(1, Duration::from_secs(60));

    let body = format!(
        r#"
    login({ADMIN_TOKEN:?})
    visit('/console/calls?tenant=newco', 'calls')
    link = driver.find_element(By.LINK_TEXT, 'c1')
    link.click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.TAG_NAME, 'audio'))
    src = driver.find_element(By.TAG_NAME, 'audio').get_attribute('src')
    assert 'forwarded' in driver.page_source and 'newco/2024/08/06/c1/c1.wav' in driver.page_source
    # The player's requests: a range answered with 206 and exactly those bytes.
    got = driver.execute_async_script('''
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {{headers: {{Range: 'bytes=0-99'}}}}).then(async r =>
            done([r.status, r.headers.get('content-range'), (await r.arrayBuffer()).byteLength]));''', src)
    assert got == [206, 'bytes 0-99/48000', 100], got
    axe()
    shoot('call')
    visit('/console/tenants/newco', 'tenant')
    assert driver.find_elements(By.CSS_SELECTOR, 'svg[role=img]'), 'pictures'
    assert 'of 600' in driver.page_source
    print(src)
"#
    );
    let src = in_browser(port, &body);
    assert!(src.contains("/console/audio/newco/"), "{src}");
    d.stop();
}

#[test]
fn a_tenant_uploads_a_zip_batch_from_the_page_and_sees_its_report() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let zip_path = d.dir.path().join("batch.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        // z2 is past the 4 MiB of a JSON body: the page streams files, whatever their size.
        for (id, len) in [("z1", 32_000), ("z2", 6 << 20)] {
            w.start_file(format!("{id}.wav"), opts).unwrap();
            std::io::Write::write_all(&mut w, &audio(id, len)).unwrap();
        }
        w.start_file("batch.csv", opts).unwrap();
        std::io::Write::write_all(
            &mut w,
            format!(
                "{HEADER}\n{}\n{}\n{}\n",
                csv_row("z1", "z1.wav"),
                csv_row("z2", "z2.wav"),
                csv_row("z3", "z3.txt")
            )
            .as_bytes(),
        )
        .unwrap();
        w.finish().unwrap();
    }
    let body = format!(
        r#"
    login({ACME_TOKEN:?})
    visit('/console/upload', 'batch-upload')
    driver.find_element(By.ID, 'files').send_keys({zip:?})
    driver.find_element(By.XPATH, '//button[text()="Upload"]').click()
    WebDriverWait(driver, 60).until(lambda d: '/console/upload/acme/' in d.current_url)
    WebDriverWait(driver, 60).until(lambda d: 'Every row is decided' in d.page_source)
    rows = [[c.text for c in r.find_elements(By.TAG_NAME, 'td')] for r in driver.find_elements(By.CSS_SELECTOR, 'section.report tbody tr')]
    assert [r[1] for r in rows] == ['z1', 'z2', 'z3'], rows
    assert [r[3] for r in rows] == ['forwarded', 'forwarded', 'rejected'], rows
    assert 'not a recording extension' in rows[2][4], rows
    axe()
    shoot('batch-report')
    visit('/console/calls', 'calls-tenant')
    print('ok')
"#,
        zip = zip_path.to_str().unwrap()
    );
    assert_eq!(in_browser(port, &body).trim(), "ok");
    let forwarded = d.wait_forwarded(2, Duration::from_secs(30));
    assert_recordings(&d, &forwarded["z1"], &[("z1.wav", &audio("z1", 32_000))]);
    assert_recordings(&d, &forwarded["z2"], &[("z2.wav", &audio("z2", 6 << 20))]);
    d.stop();
}

#[test]
fn a_tenant_sees_only_its_own_calls_and_a_form_without_its_token_is_refused() {
    let (mut d, port) = daemon_with_tenant_tokens("");
    d.start();
    wait_http(port);
    let wav = audio("own-1", 16_000);
    d.put("acme", "own-1.wav", &wav);
    d.put("acme", "own.csv", one_row_csv("own-1", "own-1.wav").as_bytes());
    d.wait_forwarded(1, Duration::from_secs(60));
    let script = format!(
        r#"
import re
def session(token):
    s = requests.Session()
    r = s.post(BASE + '/console/login', data={{'token': token}}, allow_redirects=False)
    assert r.status_code == 303 and 'HttpOnly' in r.headers['set-cookie'] and 'SameSite=Strict' in r.headers['set-cookie'], r.headers
    return s
acme, beta, admin = session({ACME_TOKEN:?}), session({BETA_TOKEN:?}), session({ADMIN_TOKEN:?})
page = acme.get(BASE + '/console/calls').text
call = re.search(r'href="(/console/calls/\d+)"', page).group(1)
detail = acme.get(BASE + call)
assert detail.status_code == 200 and 'own-1' in detail.text, detail.text
assert "script-src 'self'" in detail.headers['content-security-policy'], detail.headers
audio = re.search(r'src="(/console/audio/acme/\d+)"', detail.text).group(1)
assert acme.get(BASE + audio).content == open({wav:?}, 'rb').read()
# beta sees none of it: not in its list, not its page, not its recording.
assert 'own-1' not in beta.get(BASE + '/console/calls?tenant=acme').text
assert beta.get(BASE + call).status_code == 404
assert beta.get(BASE + audio).status_code == 404
assert beta.get(BASE + audio.replace('/acme/', '/beta/')).status_code == 404
assert beta.get(BASE + '/console/tenants/acme').status_code == 404
assert beta.get(BASE + '/console/onboard').status_code == 403
# A form posted without its CSRF token, with another session's, or from another site is refused.
csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
other = re.search(r'name="csrf" value="([0-9a-f]+)"', admin.get(BASE + '/console/tenants').text).group(1)
retry = BASE + call + '/retry'
r = acme.post(retry, data={{'x': '1'}})
assert r.status_code in (400, 403, 422), r.status_code
r = acme.post(retry, data={{'csrf': other}})
assert r.status_code == 403 and 'security token' in r.text, r.text
r = acme.post(retry, data={{'csrf': csrf}}, headers={{'Origin': 'http://evil.example', 'Sec-Fetch-Site': 'cross-site'}})
assert r.status_code == 403 and 'another site' in r.text, r.text
# With its token the form is taken (a forwarded call is not retried: 409, not 403).
r = acme.post(retry, data={{'csrf': csrf}}, allow_redirects=False)
assert r.status_code == 409 and 'Only a failed or expired call' in r.text, r.text
# Signed out, the cookie is gone and the pages ask to sign in again.
acme.post(BASE + '/console/logout', data={{'csrf': csrf}})
r = acme.get(BASE + '/console/calls', allow_redirects=False)
assert r.status_code == 303 and r.headers['location'] == '/console/login', r.status_code
print('ok')
"#,
        wav = d.dir.path().join("own-1.wav").to_str().unwrap()
    );
    std::fs::write(d.dir.path().join("own-1.wav"), &wav).unwrap();
    assert_eq!(requests(port, &script).trim(), "ok");
    d.stop();
}
