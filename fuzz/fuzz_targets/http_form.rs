//! The presigned POST's form as a client could send it: the multipart body read into the fields
//! before the file (at most 32 of at most 64 KiB), and a policy's conditions checked against
//! them; an error or a size range, never a panic. The same body read as the text fields of a
//! chat or presign request (`fields::request_fields`). The first byte splits the input: the
//! policy JSON, then the multipart body.
#![no_main]

use axum::extract::{FromRequest, Multipart};
use dropsync::ingress::http::fields::request_fields;
use dropsync::ingress::http::presigned::{check_conditions, read_form};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (policy, body) = rest.split_at((split as usize).min(rest.len()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("content-type", "multipart/form-data; boundary=B".parse().unwrap());
        let _ = request_fields(&headers, axum::body::Bytes::copy_from_slice(body)).await;
        let request = axum::http::Request::builder()
            .method("POST")
            .header("content-type", "multipart/form-data; boundary=B")
            .body(axum::body::Body::from(body.to_vec()))
            .unwrap();
        let Ok(mut form) = Multipart::from_request(request, &()).await else { return };
        let Ok(fields) = read_form(&mut form, async |fields, _file| Ok(fields)).await else {
            return;
        };
        if let Ok(policy) = serde_json::from_slice(policy) {
            if let Ok(range) = check_conditions(&policy, &fields) {
                assert!(range.start() <= range.end() || range.is_empty());
            }
        }
    });
});
