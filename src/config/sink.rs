//! `[sink]`: where forwarded conversations go.

use std::path::{Path, PathBuf};

use super::problems::{Problems, resolve};
use super::raw::RawSink;

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Dir { path: PathBuf },
    S3(S3SinkConfig),
}

#[derive(Debug, Clone)]
pub struct S3SinkConfig {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub checksums: ChecksumPolicy,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    WhenRequired,
    WhenSupported,
}

pub(super) fn sink_config(p: &mut Problems<'_>, base: &Path, state_dir: &Path, s: RawSink) -> SinkConfig {
    let kind = s.kind.as_deref().unwrap_or("dir");
    let s3_only = [
        ("bucket", s.bucket.is_some()),
        ("prefix", s.prefix.is_some()),
        ("region", s.region.is_some()),
        ("endpoint", s.endpoint.is_some()),
        ("path_style", s.path_style.is_some()),
        ("access_key_id_file", s.access_key_id_file.is_some()),
        ("secret_access_key_file", s.secret_access_key_file.is_some()),
        ("checksums", s.checksums.is_some()),
        ("multipart_threshold", s.multipart_threshold.is_some()),
        ("part_size", s.part_size.is_some()),
        ("part_concurrency", s.part_concurrency.is_some()),
    ];
    match kind {
        "dir" => {
            for (key, set) in s3_only {
                if set {
                    p.add(format!("sink.{key}"), "only used with type = \"s3\"");
                }
            }
            SinkConfig::Dir {
                path: s
                    .path
                    .map(|d| resolve(base, &d))
                    .unwrap_or_else(|| state_dir.join("outbox")),
            }
        }
        "s3" => {
            if s.path.is_some() {
                p.add("sink.path", "only used with type = \"dir\"");
            }
            let bucket = s.bucket.unwrap_or_default();
            if bucket.is_empty() {
                p.add("sink.bucket", "required with type = \"s3\"");
            }
            let mut prefix = s.prefix.unwrap_or_default();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            if s.access_key_id_file.is_some() != s.secret_access_key_file.is_some() {
                p.add(
                    "sink.access_key_id_file",
                    "set both access_key_id_file and secret_access_key_file, or neither",
                );
            }
            let checksums = match s.checksums.as_deref() {
                None | Some("when_required") => ChecksumPolicy::WhenRequired,
                Some("when_supported") => ChecksumPolicy::WhenSupported,
                Some(o) => {
                    p.add(
                        "sink.checksums",
                        format!("{o:?} is not one of \"when_required\", \"when_supported\""),
                    );
                    ChecksumPolicy::WhenRequired
                }
            };
            let part_size = p.size("sink.part_size", s.part_size.as_deref(), 16 << 20);
            if part_size < 5 << 20 {
                p.add("sink.part_size", "S3 needs parts of at least 5 MiB");
            }
            SinkConfig::S3(S3SinkConfig {
                bucket,
                prefix,
                region: s.region.unwrap_or_else(|| "us-east-1".into()),
                endpoint: s.endpoint,
                path_style: s.path_style.unwrap_or(false),
                access_key_id_file: s.access_key_id_file.map(|f| resolve(base, &f)),
                secret_access_key_file: s.secret_access_key_file.map(|f| resolve(base, &f)),
                checksums,
                multipart_threshold: p.size("sink.multipart_threshold", s.multipart_threshold.as_deref(), 32 << 20),
                part_size,
                part_concurrency: s.part_concurrency.unwrap_or(4).max(1),
            })
        }
        other => {
            p.add("sink.type", format!("{other:?} is not one of \"dir\", \"s3\""));
            SinkConfig::Dir {
                path: state_dir.join("outbox"),
            }
        }
    }
}
