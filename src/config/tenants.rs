//! `[[tenants]]`: ids, keys, time zones, field mappings and FTP sources, validated.

use std::path::Path;
use std::time::Duration;

use super::problems::{Problems, resolve};
use super::raw::{RawFtp, RawMapping, RawQuota, RawTenant};
use crate::secret::SecretSource;
use crate::tenant::{FtpSource, Mapping, MinuteAllocation, OnExceeded, Quota, Tenant, TenantId, TimeColumns};

pub(super) fn tenant(p: &mut Problems<'_>, base: &Path, at: &str, t: RawTenant) -> Option<Tenant> {
    let id = match t.id.as_deref() {
        None => {
            p.add(format!("{at}.id"), "required");
            None
        }
        Some(raw) => match TenantId::parse(raw) {
            Ok(id) => Some(id),
            Err(e) => {
                p.add(format!("{at}.id"), e);
                None
            }
        },
    };
    let timezone = match t.timezone.as_deref() {
        None => chrono_tz::UTC,
        Some(tz) => match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                p.add(
                    format!("{at}.timezone"),
                    format!("{tz:?} is not an IANA time zone like \"Europe/Paris\""),
                );
                chrono_tz::UTC
            }
        },
    };
    let on_exceeded = match t.on_allocation_exceeded.as_deref() {
        None | Some("hold") => OnExceeded::Hold,
        Some("reject") => OnExceeded::Reject,
        Some(other) => {
            p.add(
                format!("{at}.on_allocation_exceeded"),
                format!("{other:?} is neither \"hold\" nor \"reject\""),
            );
            OnExceeded::Hold
        }
    };
    let allocation = t
        .minute_allocation
        .map(|minutes| MinuteAllocation { minutes, on_exceeded });
    let mapping = mapping(p, &format!("{at}.mapping"), t.mapping);
    let quota = quota(p, &format!("{at}.quota"), t.quota.unwrap_or_default());
    let retention = t
        .retention
        .as_deref()
        .map(|r| p.duration(&format!("{at}.retention"), Some(r), Duration::ZERO));
    let mut ftp = Vec::new();
    for (i, raw) in t.ftp.into_iter().enumerate() {
        if let Some(src) = ftp_source(p, base, &format!("{at}.ftp.{i}"), raw) {
            ftp.push(src);
        }
    }
    for (i, key) in t.authorized_keys.iter().enumerate() {
        if key.split_whitespace().count() < 2 {
            p.add(
                format!("{at}.authorized_keys.{i}"),
                "not an OpenSSH public key line (\"ssh-ed25519 AAAA… comment\")",
            );
        }
    }
    Some(Tenant {
        id: id?,
        defined_in: p.file.to_path_buf(),
        authorized_keys: t.authorized_keys,
        authorized_keys_file: t.authorized_keys_file.map(|f| resolve(base, &f)),
        api_tokens_file: t.api_tokens_file.map(|f| resolve(base, &f)),
        timezone,
        mapping: mapping?,
        ftp,
        quota,
        allocation,
        retention,
    })
}

pub(super) fn mapping(p: &mut Problems<'_>, at: &str, m: Option<RawMapping>) -> Option<Mapping> {
    let Some(m) = m else {
        return Some(Mapping::default());
    };
    let mut ok = true;
    let mut non_empty = |p: &mut Problems<'_>, key: &str, v: Option<String>| -> Option<String> {
        match v {
            Some(s) if s.trim().is_empty() => {
                p.add(format!("{at}.{key}"), "a column name cannot be empty");
                ok = false;
                None
            }
            other => other.map(|s| s.trim().to_owned()),
        }
    };
    let conversation_id = non_empty(p, "conversation_id", m.conversation_id);
    let agent = non_empty(p, "agent", m.agent);
    let contact_time = non_empty(p, "contact_time", m.contact_time);
    let contact_date = non_empty(p, "contact_date", m.contact_date);
    let contact_clock = non_empty(p, "contact_clock", m.contact_clock);
    let recording = non_empty(p, "recording", m.recording);
    let agent = agent.unwrap_or_else(|| {
        p.add(format!("{at}.agent"), "required: the column that holds the agent");
        ok = false;
        String::new()
    });
    let time = match (contact_time, contact_date, contact_clock) {
        (Some(column), None, None) => TimeColumns::Single {
            column,
            format: m.contact_time_format,
        },
        (None, Some(date), Some(clock)) => {
            if m.contact_time_format.is_some() {
                p.add(format!("{at}.contact_time_format"), "only used with contact_time");
                ok = false;
            }
            TimeColumns::Split { date, clock }
        }
        (Some(_), _, _) => {
            p.add(
                format!("{at}.contact_time"),
                "map either contact_time, or contact_date and contact_clock, not both",
            );
            ok = false;
            TimeColumns::default()
        }
        _ => {
            p.add(
                format!("{at}.contact_time"),
                "required (or contact_date and contact_clock together)",
            );
            ok = false;
            TimeColumns::default()
        }
    };
    if let TimeColumns::Single { format: Some(f), .. } = &time
        && let Err(e) = crate::matching::check_time_format(f)
    {
        p.add(format!("{at}.contact_time_format"), e);
        ok = false;
    }
    let required_columns: Vec<String> = m.required_columns.iter().map(|c| c.trim().to_owned()).collect();
    ok.then_some(Mapping {
        conversation_id,
        agent,
        time,
        recording,
        required_columns,
    })
}

pub(super) fn ftp_source(p: &mut Problems<'_>, base: &Path, at: &str, f: RawFtp) -> Option<FtpSource> {
    let Some(raw_url) = f.url else {
        p.add(
            format!("{at}.url"),
            "required, like \"ftps://user@ftp.example.com:21/outgoing\"",
        );
        return None;
    };
    let source = match crate::tenant::FtpUrl::parse(&raw_url) {
        Ok(url) => Some(url),
        Err(e) => {
            p.add(format!("{at}.url"), e);
            None
        }
    };
    let password = match (f.password_file, f.password_env) {
        (Some(file), None) => Some(SecretSource::File(resolve(base, &file))),
        (None, Some(var)) => Some(SecretSource::Env(var)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.add(
                format!("{at}.password_file"),
                "set password_file or password_env, not both",
            );
            None
        }
    };
    let after_download = match f.after_download.as_deref() {
        None | Some("keep") => crate::tenant::AfterDownload::Keep,
        Some("delete") => crate::tenant::AfterDownload::Delete,
        Some(o) => {
            p.add(
                format!("{at}.after_download"),
                format!("{o:?} is not one of \"keep\", \"delete\""),
            );
            crate::tenant::AfterDownload::Keep
        }
    };
    let connections = f.connections.unwrap_or(4);
    if !(1..=16).contains(&connections) {
        p.add(format!("{at}.connections"), "must be between 1 and 16");
    }
    Some(FtpSource {
        connections: connections.clamp(1, 16),
        url: source?,
        password,
        poll_interval: p.duration(
            &format!("{at}.poll_interval"),
            f.poll_interval.as_deref(),
            Duration::from_secs(300),
        ),
        min_age: p.duration(&format!("{at}.min_age"), f.min_age.as_deref(), Duration::from_secs(120)),
        after_download,
        ca_file: f.ca_file.map(|c| resolve(base, &c)),
        tls_pin_sha256: f
            .tls_pin_sha256
            .iter()
            .filter_map(|pin| match parse_pin(pin) {
                Ok(key) => Some(key),
                Err(e) => {
                    p.add(format!("{at}.tls_pin_sha256"), e);
                    None
                }
            })
            .collect(),
        tls_insecure_skip_verify: f.tls_insecure_skip_verify.unwrap_or(false),
        timeout: p.duration(&format!("{at}.timeout"), f.timeout.as_deref(), Duration::from_secs(60)),
    })
}

/// Reads a `tls_pin_sha256` entry: 64 hex digits (colons allowed), or the 32 bytes in base64
/// (with or without a `sha256//` prefix, as in HPKP and curl's `--pinnedpubkey`).
pub(super) fn parse_pin(raw: &str) -> Result<[u8; 32], String> {
    let s = raw.trim().trim_start_matches("sha256//");
    let hex_digits: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = if hex_digits.len() == 64 {
        hex::decode(&hex_digits).map_err(|e| e.to_string())?
    } else {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| e.to_string())?
    };
    bytes
        .try_into()
        .map_err(|_| format!("{raw:?} is not a SHA-256 (64 hex digits, or 32 bytes in base64)"))
}

/// A quota table (`[limits] quota` or a tenant's `quota`): only the keys it sets.
pub(super) fn quota(p: &mut Problems<'_>, at: &str, q: RawQuota) -> Quota {
    let bytes = q.bytes.as_deref().map(|b| p.size(&format!("{at}.bytes"), Some(b), 0));
    if q.files == Some(0) || q.sessions == Some(0) || bytes == Some(0) {
        p.add(at, "a quota of 0 lets nothing in; leave the key out for no limit");
    }
    Quota {
        bytes,
        files: q.files,
        sessions: q.sessions,
    }
}
