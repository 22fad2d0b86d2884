//! SFTP reply packets that more than one request builds (draft-ietf-secsh-filexfer-02 §7),
//! the VERSION reply with the OpenSSH extensions we answer, and extension payload strings.

use super::*;

pub(super) fn status(id: u32, code: StatusCode, message: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: message.to_owned(),
        language_tag: "en-US".into(),
    })
}

pub(super) fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "Ok")
}

pub(super) fn fs_err(id: u32, e: FsError) -> Packet {
    status(id, e.code, &e.message)
}

/// The answer to a call whose only result is success or an error.
pub(super) fn unit_reply(id: u32, r: crate::ingress::sftp::fs::FsResult<()>) -> Packet {
    match r {
        Ok(()) => ok(id),
        Err(e) => fs_err(id, e),
    }
}

/// An SSH string from extension payloads.
pub(super) fn take_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

/// The VERSION reply, with the OpenSSH extensions clients look for.
pub(super) fn version() -> Version {
    let mut v = Version::new();
    for (name, ver) in [
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("fsync@openssh.com", "1"),
        ("limits@openssh.com", "1"),
    ] {
        v.extensions.insert(name.into(), ver.into());
    }
    v
}
