//! Retention (SPEC §2 rule 6, §5): local copies, archived files and orphans left in drop
//! folders, are deleted once past their tenant's retention; nothing else is.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// acme and beta with the usual mapping; `acme_extra` and `beta_extra` are lines of each.
fn tenants(acme_extra: &str, beta_extra: &str) -> String {
    let acme = ACME.replace("timezone = \"UTC\"\n", &format!("timezone = \"UTC\"\n{acme_extra}"));
    let beta = ACME.replace(
        "id = \"acme\"\ntimezone = \"UTC\"\n",
        &format!("id = \"beta\"\ntimezone = \"UTC\"\n{beta_extra}"),
    );
    format!("{acme}\n{beta}")
}

/// A daemon with a grace of 1 s, `[retention] local`, the tenants, and metrics on a free port.
fn daemon(local: &str, tenants: &str) -> (Daemon, u16) {
    let metrics = free_port();
    let d = Daemon::new("1s", tenants).with_replaced(
        "state_dir = \"var\"\n",
        &format!(
            "state_dir = \"var\"\n[retention]\nlocal = \"{local}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    );
    (d, metrics)
}

/// `tenant` sends a call `{id}` and a recording no row claims (`{id}-orphan.wav`).
fn call_and_orphan(d: &Daemon, tenant: &str, id: &str) {
    d.put(
        tenant,
        &format!("{id}-orphan.wav"),
        &audio(&format!("{id} orphan"), 3000),
    );
    d.put(tenant, &format!("{id}.wav"), &audio(id, 3000));
    d.put(
        tenant,
        &format!("{id}.csv"),
        one_row_csv(id, &format!("{id}.wav")).as_bytes(),
    );
}

fn archived(d: &Daemon, tenant: &str) -> Vec<PathBuf> {
    walk(&d.dir.path().join("var/archive").join(tenant))
}

fn orphan_kept(d: &Daemon, tenant: &str, id: &str) -> bool {
    d.drop_dir(tenant).join(format!("{id}-orphan.wav")).exists()
}

#[test]
fn orphans_and_archived_copies_are_deleted_after_retention() {
    let (mut d, _) = daemon("3s", &tenants("", ""));
    d.start();
    call_and_orphan(&d, "acme", "A-1");
    wait_for("A-1 to be forwarded and archived", T, || {
        archived(&d, "acme").len() == 2
    });
    call_and_orphan(&d, "beta", "B-1");
    wait_for("B-1 to be forwarded", T, || d.forwarded().contains_key("B-1"));
    wait_for("acme's local copies to be deleted", T, || {
        archived(&d, "acme").is_empty() && !orphan_kept(&d, "acme", "A-1")
    });
    wait_for("beta's local copies to be deleted", T, || {
        archived(&d, "beta").is_empty() && !orphan_kept(&d, "beta", "B-1")
    });
    assert!(d.log().contains("local copies past retention deleted"));
    assert_eq!(drop_files(&d, "acme"), Vec::<String>::new());
}

#[test]
fn each_tenant_keeps_local_copies_for_its_own_retention() {
    let (mut d, metrics) = daemon("1h", &tenants("retention = \"2s\"\n", "retention = \"30d\"\n"));
    d.start();
    call_and_orphan(&d, "acme", "A-1");
    call_and_orphan(&d, "beta", "B-1");
    wait_for("both calls to be forwarded and archived", T, || {
        archived(&d, "acme").len() == 2 && archived(&d, "beta").len() == 2
    });
    wait_for("acme's local copies to be deleted after its 2 s", T, || {
        archived(&d, "acme").is_empty() && !orphan_kept(&d, "acme", "A-1")
    });
    // beta's are kept for its 30 days, through whole housekeeping passes after acme's went.
    let passes = || {
        sample(
            &http_get(metrics, "/metrics").1,
            &["dropsync_housekeeping_passes_total"],
        )
        .unwrap_or(0.0)
    };
    let seen = passes();
    wait_for("two more housekeeping passes", T, || passes() >= seen + 2.0);
    assert_eq!(archived(&d, "beta").len(), 2);
    assert!(orphan_kept(&d, "beta", "B-1"));
}
