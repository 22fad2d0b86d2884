//! The `s3` sink: any S3-compatible store, through aws-sdk-s3.
//!
//! Objects are streamed from disk: one PUT below `multipart_threshold`, a multipart upload with
//! `part_concurrency` parts in flight above it (never the whole file in memory). A failed
//! multipart upload is aborted; at start-up every multipart upload left under our prefix is
//! aborted too (only one dropsync writes there, so any such upload is an orphan of a crash).
//! Errors are classified: timeouts, connection failures, 5xx and throttling are transient
//! (retried from the durable queue); refused credentials or a missing bucket are permanent.

use std::fs::File;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::SinkError;
use crate::config::{ChecksumPolicy, S3SinkConfig};

/// Bytes read from a recording at a time (the SDK's default, 4 KiB, costs a body frame each).
const READ_BUFFER: usize = 256 * 1024;

/// Error codes that retrying will not fix.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AccountProblem",
    "InvalidObjectState",
    // Keys are shortened to S3's 1,024 bytes; a store with a shorter limit refuses them for good.
    "KeyTooLongError",
    // The store does not do what was asked (a checksum header, a multipart upload), or not at
    // this size: the configuration has to change first.
    "NotImplemented",
    "EntityTooLarge",
];

/// A second, independent open of the same file: its own offset, so parts read concurrently
/// (a `try_clone` shares the offset). Through /proc, so it is the same inode, not a path that
/// could have been replaced meanwhile.
fn reopen(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Classifies an SDK error as transient or permanent, with a message a person can act on.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    err: SdkError<E, R>,
) -> SinkError {
    let permanent = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            PERMANENT_CODES.contains(&code)
        }
        SdkError::ConstructionFailure(_) => true,
        _ => false,
    };
    let detail = match &err {
        SdkError::ServiceError(se) if se.err().code().is_some() => {
            format!(
                "{} ({})",
                se.err().code().unwrap_or(""),
                se.err().message().unwrap_or("no message")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    };
    let message = format!("{what}: {detail}");
    if permanent {
        SinkError::permanent(message)
    } else {
        SinkError::transient(message)
    }
}

pub struct S3Sink {
    client: Client,
    cfg: S3SinkConfig,
}

impl S3Sink {
    pub async fn new(cfg: S3SinkConfig) -> Result<S3Sink, SinkError> {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(endpoint) = &cfg.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id_file), Some(secret_file)) = (&cfg.access_key_id_file, &cfg.secret_access_key_file) {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| SinkError::permanent(format!("cannot read {}: {e}", p.display())))
            };
            let creds = Credentials::new(read(id_file)?, read(secret_file)?, None, None, "dropsync-config");
            loader = loader.credentials_provider(creds);
        }
        let shared = loader.load().await;
        let checksums = match cfg.checksums {
            ChecksumPolicy::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            ChecksumPolicy::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(checksums.0)
            .response_checksum_validation(checksums.1)
            // Upload stall detection has reported false "0 B/s" stalls on busy hosts; our
            // own retry covers real stalls.
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .upload_enabled(false)
                    .grace_period(Duration::from_secs(30))
                    .build(),
            )
            .build();
        Ok(S3Sink {
            client: Client::from_conf(conf),
            cfg,
        })
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.cfg.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    /// Start-up: warns (does not fail) if the bucket cannot be reached, and aborts multipart
    /// uploads a crash left behind under our prefix.
    pub async fn start_up(&self) {
        if let Err(e) = self.client.head_bucket().bucket(&self.cfg.bucket).send().await {
            let e = classify("bucket check", e);
            tracing::warn!(bucket = %self.cfg.bucket, error = %e, "the bucket cannot be reached now; forwarding will retry");
            return;
        }
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.cfg.bucket)
            .prefix(&self.cfg.prefix)
            .send()
            .await;
        match listed {
            Ok(out) => {
                for u in out.uploads() {
                    let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                        continue;
                    };
                    match self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.cfg.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                    {
                        Ok(_) => tracing::info!(key, "aborted a multipart upload left by an earlier run"),
                        Err(e) => {
                            tracing::warn!(key, error = %classify("abort", e), "cannot abort a stale multipart upload")
                        }
                    }
                }
            }
            // gofakes3-based servers (rclone) answer NoSuchUpload when there are none.
            Err(e) if e.as_service_error().and_then(|se| se.code()) == Some("NoSuchUpload") => {}
            Err(e) => {
                tracing::warn!(error = %classify("listing multipart uploads", e), "cannot look for stale multipart uploads")
            }
        }
    }

    /// Uploads `size` bytes of `file` to `key`.
    pub async fn put_file(&self, key: &str, file: File, size: u64) -> Result<(), SinkError> {
        if size < self.cfg.multipart_threshold {
            let body = ByteStream::read_from()
                .file(tokio::fs::File::from_std(file))
                .buffer_size(READ_BUFFER)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| SinkError::transient(format!("read recording: {e}")))?;
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .content_length(size as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| classify("PUT", e))?;
            return Ok(());
        }
        self.multipart(key, file, size).await
    }

    async fn multipart(&self, key: &str, file: File, size: u64) -> Result<(), SinkError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .customize()
            .interceptor(compat::InitiateMultipartRoot)
            .send()
            .await
            .map_err(|e| classify("create multipart upload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| SinkError::transient("no upload id returned"))?
            .to_owned();
        match self.parts(key, &upload_id, &file, size).await {
            Ok(parts) => {
                let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(done)
                    .send()
                    .await;
                match completed {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        self.abort(key, &upload_id).await;
                        Err(classify("complete multipart upload", e))
                    }
                }
            }
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = r {
            // Left for the start-up sweep.
            tracing::warn!(key, error = %classify("abort", e), "cannot abort a failed multipart upload");
        }
    }

    /// Uploads the parts, at most `part_concurrency` at a time, each streamed from its slice.
    async fn parts(&self, key: &str, upload_id: &str, file: &File, size: u64) -> Result<Vec<CompletedPart>, SinkError> {
        let part_size = self.cfg.part_size;
        let count = size.div_ceil(part_size);
        if count > 10_000 {
            return Err(SinkError::permanent(format!(
                "{key}: {size} bytes need more than 10,000 parts of {part_size}"
            )));
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        loop {
            while next < count && tasks.len() < self.cfg.part_concurrency as usize {
                let offset = next * part_size;
                let len = part_size.min(size - offset);
                let number = (next + 1) as i32;
                let f = reopen(file).map_err(|e| SinkError::transient(format!("read recording: {e}")))?;
                let (client, bucket, key, upload_id) = (
                    self.client.clone(),
                    self.cfg.bucket.clone(),
                    key.to_owned(),
                    upload_id.to_owned(),
                );
                tasks.spawn(async move {
                    let body = ByteStream::read_from()
                        .file(tokio::fs::File::from_std(f))
                        .buffer_size(READ_BUFFER)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| SinkError::transient(format!("read recording: {e}")))?;
                    let out = client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| classify(&format!("upload part {number}"), e))?;
                    Ok::<_, SinkError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .build(),
                    )
                });
                next += 1;
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => parts.push(part),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(SinkError::transient(format!("part task failed: {e}"))),
            }
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify("PUT metadata.json", e))?;
        Ok(())
    }
}

/// Interoperability with gofakes3-based servers (`rclone serve s3` among them), which answer
/// CreateMultipartUpload with the root element `InitiateMultipartUpload` instead of
/// `InitiateMultipartUploadResult`. Lenient parsers (boto3) accept it; the Rust SDK does not.
/// The reply is small XML: it is buffered and its root element renamed before parsing.
mod compat {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut;
    use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
    use aws_sdk_s3::error::BoxError;
    use aws_sdk_s3::primitives::SdkBody;
    use bytes::Bytes;
    use http_body::{Body, Frame};

    #[derive(Debug)]
    pub struct InitiateMultipartRoot;

    impl Intercept for InitiateMultipartRoot {
        fn name(&self) -> &'static str {
            "InitiateMultipartRoot"
        }

        fn modify_before_deserialization(
            &self,
            context: &mut BeforeDeserializationInterceptorContextMut<'_>,
            _components: &RuntimeComponents,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let response = context.response_mut();
            let inner = std::mem::replace(response.body_mut(), SdkBody::taken());
            *response.body_mut() = SdkBody::from_body_1_x(Renamed {
                inner,
                buf: Vec::new(),
                done: false,
            });
            Ok(())
        }
    }

    /// Collects the whole body, then yields it once with the root element fixed.
    struct Renamed {
        inner: SdkBody,
        buf: Vec<u8>,
        done: bool,
    }

    const WRONG_OPEN: &[u8] = b"<InitiateMultipartUpload>";
    const WRONG_OPEN_NS: &[u8] = b"<InitiateMultipartUpload ";
    const WRONG_CLOSE: &[u8] = b"</InitiateMultipartUpload>";

    fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        match hay.windows(from.len()).position(|w| w == from) {
            Some(i) => [&hay[..i], to, &hay[i + from.len()..]].concat(),
            None => hay.to_vec(),
        }
    }

    pub fn fix(xml: &[u8]) -> Vec<u8> {
        let x = replace(xml, WRONG_OPEN, b"<InitiateMultipartUploadResult>");
        let x = replace(&x, WRONG_OPEN_NS, b"<InitiateMultipartUploadResult ");
        replace(&x, WRONG_CLOSE, b"</InitiateMultipartUploadResult>")
    }

    impl Body for Renamed {
        type Data = Bytes;
        type Error = aws_sdk_s3::primitives::ByteStreamError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.done {
                return Poll::Ready(None);
            }
            loop {
                match Pin::new(&mut self.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(aws_sdk_s3::primitives::ByteStreamError::from(
                            std::io::Error::other(e),
                        ))));
                    }
                    Poll::Ready(None) => {
                        self.done = true;
                        let fixed = fix(&self.buf);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(fixed)))));
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn only_the_wrong_root_is_renamed() {
            let wrong = b"<?xml version=\"1.0\"?>\n<InitiateMultipartUpload><Bucket>b</Bucket><UploadId>u</UploadId></InitiateMultipartUpload>";
            let fixed = String::from_utf8(super::fix(wrong)).unwrap();
            assert!(
                fixed.contains("<InitiateMultipartUploadResult><Bucket>")
                    && fixed.ends_with("</InitiateMultipartUploadResult>")
            );
            let right =
                b"<InitiateMultipartUploadResult xmlns=\"x\"><UploadId>u</UploadId></InitiateMultipartUploadResult>";
            assert_eq!(super::fix(right), right.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Retry;
    use aws_sdk_s3::operation::put_object::PutObjectError;

    fn refused(code: &str) -> SdkError<PutObjectError, ()> {
        let meta = aws_sdk_s3::error::ErrorMetadata::builder()
            .code(code)
            .message("as the store says")
            .build();
        SdkError::service_error(PutObjectError::generic(meta), ())
    }

    #[test]
    fn an_outage_or_throttling_is_retried_a_refusal_is_not() {
        for code in ["InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"] {
            assert!(classify("PUT", refused(code)).retry_helps(), "{code}");
        }
        for code in [
            "AccessDenied",
            "NoSuchBucket",
            "SignatureDoesNotMatch",
            "NotImplemented",
            "EntityTooLarge",
        ] {
            assert!(!classify("PUT", refused(code)).retry_helps(), "{code}");
        }
        let timeout: SdkError<PutObjectError, ()> = SdkError::timeout_error("no answer");
        assert!(classify("PUT", timeout).retry_helps());
        let unbuildable: SdkError<PutObjectError, ()> = SdkError::construction_failure("bad key");
        assert!(!classify("PUT", unbuildable).retry_helps());
    }
}
