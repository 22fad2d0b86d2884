//! The raw (serde) layer of the configuration: what a TOML file may say, before validation.

use serde::Deserialize;

#[derive(Deserialize, Default)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<String>,
    pub(super) log_format: Option<String>,
    #[serde(default)]
    pub(super) include: Vec<String>,
    pub(super) sftp: Option<RawSftp>,
    pub(super) sink: Option<RawSink>,
    pub(super) matching: Option<RawMatching>,
    pub(super) retention: Option<RawRetention>,
    pub(super) forwarding: Option<RawForwarding>,
    pub(super) intake: Option<RawIntake>,
    pub(super) limits: Option<RawLimits>,
    pub(super) catalog: Option<RawCatalog>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) http: Option<RawHttp>,
    #[serde(default)]
    pub(super) tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawIncluded {
    #[serde(default)]
    pub(super) tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSftp {
    pub(super) listen: Option<String>,
    /// The older one-key form of `host_keys`.
    pub(super) host_key: Option<String>,
    pub(super) host_keys: Option<Vec<String>>,
    pub(super) max_sessions: Option<u32>,
    pub(super) max_sessions_per_ip: Option<u32>,
    pub(super) login_grace: Option<String>,
    pub(super) silent_grace: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_auth_failures: Option<u32>,
    pub(super) ban_time: Option<String>,
    pub(super) max_file_size: Option<String>,
    pub(super) fsync_on_close: Option<bool>,
    pub(super) max_handles: Option<u32>,
    pub(super) max_channels: Option<u32>,
    pub(super) max_startups: Option<u32>,
    pub(super) max_startups_per_source: Option<u32>,
    #[serde(default)]
    pub(super) penalty_exempt: Vec<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSink {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) path: Option<String>,
    pub(super) bucket: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) path_style: Option<bool>,
    pub(super) access_key_id_file: Option<String>,
    pub(super) secret_access_key_file: Option<String>,
    pub(super) checksums: Option<String>,
    pub(super) multipart_threshold: Option<String>,
    pub(super) part_size: Option<String>,
    pub(super) part_concurrency: Option<u32>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawMatching {
    pub(super) grace: Option<String>,
    pub(super) recording_extensions: Option<Vec<String>>,
    pub(super) zip_max_unpacked: Option<String>,
    pub(super) zip_max_entries: Option<u64>,
    pub(super) zip_max_ratio: Option<u64>,
    pub(super) max_field_bytes: Option<String>,
    pub(super) check_audio: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawRetention {
    pub(super) local: Option<String>,
    pub(super) catalog: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawForwarding {
    pub(super) workers: Option<u32>,
    pub(super) retry_min: Option<String>,
    pub(super) retry_max: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawIntake {
    pub(super) lanes: Option<u32>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawCatalog {
    pub(super) busy_timeout: Option<String>,
    pub(super) url: Option<String>,
    pub(super) node_id: Option<String>,
    pub(super) lease: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Deserialize, Default)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) admin_tokens_file: Option<String>,
    pub(super) upload_url_ttl: Option<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) max_connections_per_ip: Option<u32>,
    pub(super) header_timeout: Option<String>,
    pub(super) body_timeout: Option<String>,
    pub(super) max_json_bytes: Option<String>,
    pub(super) max_upload_bytes: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawTenant {
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) authorized_keys: Vec<String>,
    pub(super) authorized_keys_file: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) minute_allocation: Option<u64>,
    pub(super) on_allocation_exceeded: Option<String>,
    pub(super) mapping: Option<RawMapping>,
    #[serde(default)]
    pub(super) ftp: Vec<RawFtp>,
    pub(super) quota: Option<RawQuota>,
    pub(super) retention: Option<String>,
    pub(super) api_tokens_file: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawLimits {
    pub(super) quota: Option<RawQuota>,
    pub(super) max_attempts: Option<u32>,
    pub(super) stale_upload: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawQuota {
    pub(super) bytes: Option<String>,
    pub(super) files: Option<u64>,
    pub(super) sessions: Option<u32>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawMapping {
    pub(super) conversation_id: Option<String>,
    pub(super) agent: Option<String>,
    pub(super) contact_time: Option<String>,
    pub(super) contact_date: Option<String>,
    pub(super) contact_clock: Option<String>,
    pub(super) contact_time_format: Option<String>,
    pub(super) recording: Option<String>,
    #[serde(default)]
    pub(super) required_columns: Vec<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawFtp {
    pub(super) url: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) poll_interval: Option<String>,
    pub(super) min_age: Option<String>,
    pub(super) after_download: Option<String>,
    pub(super) ca_file: Option<String>,
    #[serde(default)]
    pub(super) tls_pin_sha256: Vec<String>,
    pub(super) tls_insecure_skip_verify: Option<bool>,
    pub(super) timeout: Option<String>,
    pub(super) connections: Option<u32>,
}
