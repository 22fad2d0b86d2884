//! Why a session ends before its client closes it. None of these reach the client as a reply:
//! the session is over, and its unfinished uploads are discarded (see `abort_all`).

use super::replies::Outstanding;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A length no SFTP packet has (zero, or past `MAX_PACKET`): the stream is not SFTP, or
    /// out of step.
    #[error("packet of {0} bytes")]
    PacketSize(usize),
    #[error("client went away mid-packet")]
    MidPacket,
    #[error("first packet is not INIT")]
    NotInit,
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// A reply russh-sftp could not encode (its error type is named only by this impl).
    #[error("encode: {0}")]
    Encode(<bytes::Bytes as TryFrom<russh_sftp::protocol::Packet>>::Error),
    /// The replies' writer is gone: the connection closed.
    #[error("client gone")]
    ClientGone,
    /// The client sends requests and does not read the replies.
    #[error("more than {} bytes of replies not read", Outstanding::LIMIT)]
    RepliesNotRead,
    #[error("session ending")]
    Ending,
    #[error("read pump gone")]
    ReadPumpGone,
    /// Work on the blocking pool panicked or was cancelled (a bug, or the runtime stopping).
    #[error("{0}")]
    Blocking(#[from] tokio::task::JoinError),
    /// A budget of the session was closed (it is never closed while the session runs).
    #[error("{0}")]
    Budget(#[from] tokio::sync::AcquireError),
}
