//! Configuration tests: every example we ship loads, and every problem is reported at once.

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn problems(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", text);
    match load(&f) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect(),
    }
}

#[test]
fn every_shipped_example_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut examples = vec![root.join("config.example.toml")];
    for entry in std::fs::read_dir(root.join("examples")).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            examples.push(entry.path());
        }
    }
    for ex in examples {
        let cfg = load(&ex).unwrap_or_else(|e| panic!("{} does not load:\n{e}", ex.display()));
        assert!(!cfg.tenants.is_empty(), "{} has no tenant", ex.display());
    }
}

#[test]
fn minimal_config_gets_defaults_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", "[[tenants]]\nid = \"acme\"\n");
    let cfg = load(&f).unwrap();
    assert_eq!(cfg.state_dir, dir.path().join("var"));
    assert!(matches!(&cfg.sink, SinkConfig::Dir { path } if *path == dir.path().join("var/outbox")));
    assert_eq!(cfg.matching.grace, Duration::from_secs(86400));
    assert_eq!(cfg.retention.local, Duration::from_secs(7 * 86400));
    assert_eq!(cfg.matching.zip_max_unpacked, 3 << 30);
    assert_eq!(cfg.limits.stale_upload, Duration::from_secs(86400));
    assert!(cfg.sftp.is_none());
}

#[test]
fn stale_upload_is_a_duration_of_at_least_a_second() {
    let tenant = "[[tenants]]\nid = \"a\"\n";
    assert!(problems(&format!("[limits]\nstale_upload = \"90m\"\n{tenant}")).is_empty());
    let found = problems(&format!("[limits]\nstale_upload = \"soon\"\n{tenant}"));
    assert!(
        found[0].starts_with("limits.stale_upload: \"soon\" is not a duration"),
        "{found:?}"
    );
    let found = problems(&format!("[limits]\nstale_upload = \"0s\"\n{tenant}"));
    assert_eq!(found, ["limits.stale_upload: must be at least 1s"]);
}

#[test]
fn unknown_keys_are_reported_with_full_path_all_at_once() {
    let found = problems(
        "colour = 1\n[sink]\ntype = \"dir\"\npth = \"x\"\n[[tenants]]\nid = \"a\"\n[tenants.mapping]\nagent = \"A\"\ncontact_time = \"T\"\nrecordng = \"R\"\n",
    );
    assert!(found.contains(&"colour: unknown key".to_string()), "{found:?}");
    assert!(found.contains(&"sink.pth: unknown key".to_string()), "{found:?}");
    assert!(
        found.contains(&"tenants.0.mapping.recordng: unknown key".to_string()),
        "{found:?}"
    );
}

#[test]
fn semantic_problems_are_all_reported() {
    let found = problems(
        "log_format = \"xml\"\n[matching]\ngrace = \"soon\"\n[[tenants]]\nid = \"Bad Id\"\ntimezone = \"Mars/Olympus\"\n[tenants.mapping]\ncontact_time = \"T\"\n",
    );
    let keys: Vec<&str> = found.iter().map(|s| s.split(':').next().unwrap()).collect();
    for k in [
        "log_format",
        "matching.grace",
        "tenants.0.id",
        "tenants.0.timezone",
        "tenants.0.mapping.agent",
    ] {
        assert!(keys.contains(&k), "{k} missing in {found:?}");
    }
}

#[test]
fn type_errors_name_their_key() {
    let found = problems("[[tenants]]\nid = 5\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("tenants[0].id") || found[0].starts_with("tenants.0.id"),
        "{found:?}"
    );
}

#[test]
fn includes_add_tenants_and_duplicates_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tenants.d/b.toml", "[[tenants]]\nid = \"b\"\n");
    write(dir.path(), "tenants.d/c.toml", "[[tenants]]\nid = \"c\"\nbogus = 1\n");
    let f = write(
        dir.path(),
        "c.toml",
        "include = [\"tenants.d/*.toml\"]\n[[tenants]]\nid = \"a\"\n",
    );
    let err = load(&f).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].file.ends_with("tenants.d/c.toml"));
    assert_eq!(err.problems[0].key, "tenants.0.bogus");
    std::fs::write(dir.path().join("tenants.d/c.toml"), "[[tenants]]\nid = \"a\"\n").unwrap();
    let err = load(&f).unwrap_err();
    assert!(err.problems[0].message.contains("more than once"));
    std::fs::write(dir.path().join("tenants.d/c.toml"), "[[tenants]]\nid = \"c\"\n").unwrap();
    let cfg = load(&f).unwrap();
    let ids: Vec<&str> = cfg.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn sink_keys_must_fit_the_type() {
    let found = problems("[sink]\ntype = \"dir\"\nbucket = \"b\"\n[[tenants]]\nid = \"a\"\n");
    assert_eq!(found, ["sink.bucket: only used with type = \"s3\""]);
    let found = problems("[sink]\ntype = \"s3\"\n[[tenants]]\nid = \"a\"\n");
    assert_eq!(found, ["sink.bucket: required with type = \"s3\""]);
}

#[test]
fn ftp_urls_with_inline_passwords_are_refused() {
    let found = problems("[[tenants]]\nid = \"a\"\n[[tenants.ftp]]\nurl = \"ftp://u:hunter2@h/x\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("password_file"), "{found:?}");
    assert!(
        !found[0].contains("hunter2"),
        "the secret leaked into the message: {found:?}"
    );
}

#[test]
fn ftp_source_keys_are_checked() {
    let found = problems(
        "[[tenants]]\nid = \"a\"\n[[tenants.ftp]]\nurl = \"ftps://u@h/x\"\nconnections = 0\n\
         after_download = \"move\"\nmin_age = \"soon\"\npassword_file = \"p\"\npassword_env = \"P\"\n",
    );
    assert_eq!(found.len(), 4, "{found:?}");
    for key in ["connections", "after_download", "min_age", "password_file"] {
        assert!(found.iter().any(|p| p.contains(key)), "{key}: {found:?}");
    }
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?}"), "<secret>");
    assert_eq!(format!("{:?}", Some(s)), "Some(<secret>)");
}

#[test]
fn host_keys_default_to_openssh_names_and_take_the_old_one_key_form() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", "[sftp]\n[[tenants]]\nid = \"acme\"\n");
    let keys = load(&f).unwrap().sftp.unwrap().host_keys;
    let names: Vec<_> = keys
        .iter()
        .map(|k| k.strip_prefix(dir.path().join("var")).unwrap())
        .collect();
    assert_eq!(
        names,
        ["ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"].map(Path::new)
    );
    let f = write(
        dir.path(),
        "c.toml",
        "[sftp]\nhost_key = \"k/ed25519\"\n[[tenants]]\nid = \"acme\"\n",
    );
    assert_eq!(
        load(&f).unwrap().sftp.unwrap().host_keys,
        [dir.path().join("k/ed25519")]
    );
    let both = problems("[sftp]\nhost_key = \"a\"\nhost_keys = [\"b\"]\n[[tenants]]\nid = \"acme\"\n");
    assert_eq!(
        both,
        ["sftp.host_key: give host_keys alone (host_key is its older one-key form)"]
    );
    let none = problems("[sftp]\nhost_keys = []\n[[tenants]]\nid = \"acme\"\n");
    assert_eq!(none, ["sftp.host_keys: list at least one key file"]);
}

#[test]
fn a_tenant_may_keep_its_local_copies_for_its_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[retention]\nlocal = \"7d\"\n[[tenants]]\nid = \"a\"\nretention = \"30d\"\n[[tenants]]\nid = \"b\"\n",
    );
    let cfg = load(&f).unwrap();
    assert_eq!(cfg.retention_of(&cfg.tenants[0]), Duration::from_secs(30 * 86400));
    assert_eq!(cfg.retention_of(&cfg.tenants[1]), Duration::from_secs(7 * 86400));
    let found = problems("[[tenants]]\nid = \"a\"\nretention = \"a month\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("tenants.0.retention: \"a month\" is not a duration"),
        "{found:?}"
    );
}

#[test]
fn tls_pins_are_read_as_hex_or_base64() {
    use super::tenants::parse_pin;
    let hex = "ab".repeat(32);
    assert_eq!(parse_pin(&hex).unwrap(), [0xab; 32]);
    let colons = vec!["ab"; 32].join(":");
    assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
    assert_eq!(
        parse_pin("sha256//q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap(),
        [0xab; 32]
    );
    assert!(parse_pin("abc").is_err());
}

#[test]
fn a_catalog_url_must_be_postgres_and_the_node_defaults_to_the_host_name() {
    let tenant = "[[tenants]]\nid = \"acme\"\n";
    assert_eq!(
        problems(&format!("[catalog]\nurl = \"mysql://db/x\"\nnode_id = \"\"\n{tenant}")),
        [
            "catalog.url: must be a postgres:// URL (leave it out for SQLite in state_dir)",
            "catalog.node_id: must be 1 to 64 characters"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        &format!("[catalog]\nurl = \"postgres://dropsync@db/dropsync\"\n{tenant}"),
    );
    let cfg = load(&f).unwrap();
    assert_eq!(cfg.catalog.url.as_deref(), Some("postgres://dropsync@db/dropsync"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(cfg.catalog.node_id, host.trim());
    assert_eq!(load(&write(dir.path(), "d.toml", tenant)).unwrap().catalog.url, None);
}
