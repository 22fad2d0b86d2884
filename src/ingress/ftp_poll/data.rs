//! Listings over a data connection we open ourselves, so that the server's closing reply can be
//! read: Pure-FTPd says only there that a listing is incomplete (`226 Output truncated to 10000
//! matches`), and suppaftp's own listing calls drop that reply.
//!
//! The steps are suppaftp's: EPSV (RFC 2428) or PASV to the address of the control connection
//! (a server behind NAT may announce a private one), connect, send the command, read its
//! preliminary reply, then TLS on the data connection when the control connection has it. The
//! data connection's TLS uses the control connection's `ClientConfig`, so it resumes that
//! session, as vsftpd and ProFTPD insist by default.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use suppaftp::Status;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use super::client::{Control, FtpPollError, timed};

/// A listing larger than this is refused rather than held in memory.
const MAX_LISTING_BYTES: u64 = 512 << 20;

/// TLS for data connections: the control connection's settings and server name.
#[derive(Clone)]
pub struct DataTls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: ServerName<'static>,
}

/// How a data connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passive {
    Extended,
    Classic,
}

/// A listing: its lines, and the server's closing reply, every line of it.
#[derive(Debug)]
pub struct ListingReply {
    pub lines: Vec<String>,
    pub closing: String,
}

/// Runs the listing command `command` (`MLSD /dir`, `LIST`) over a data connection of ours.
pub async fn list(
    ftp: &mut Control,
    peer: SocketAddr,
    command: &str,
    passive: Passive,
    tls: Option<&DataTls>,
    timeout: Duration,
) -> Result<ListingReply, FtpPollError> {
    let addr = data_address(ftp, peer, passive, timeout).await?;
    let op = format!("{command} (data connection to {addr})");
    let tcp = timed(&op, timeout, async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(suppaftp::FtpError::ConnectionError)
    })
    .await?;
    timed(
        command,
        timeout,
        ftp.custom_command(command, &[Status::AboutToSend, Status::AlreadyOpen]),
    )
    .await?;
    let lines = match tls {
        Some(tls) => {
            let stream = timed(&op, timeout, async {
                tls.connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(suppaftp::FtpError::ConnectionError)
            })
            .await?;
            read_lines(stream, &op, timeout).await?
        }
        None => read_lines(tcp, &op, timeout).await?,
    };
    let closing = timed(
        command,
        timeout,
        ftp.read_response_in(&[Status::ClosingDataConnection, Status::RequestedFileActionOk]),
    )
    .await?;
    Ok(ListingReply {
        lines,
        closing: String::from_utf8_lossy(&closing.body).trim_end().to_owned(),
    })
}

/// Where the server waits for our data connection: the port it names, at the address the
/// control connection already reaches.
async fn data_address(
    ftp: &mut Control,
    peer: SocketAddr,
    passive: Passive,
    timeout: Duration,
) -> Result<SocketAddr, FtpPollError> {
    let (command, status) = match passive {
        Passive::Extended => ("EPSV", Status::ExtendedPassiveMode),
        Passive::Classic => ("PASV", Status::PassiveMode),
    };
    let reply = timed(command, timeout, ftp.custom_command(command, &[status])).await?;
    let text = String::from_utf8_lossy(&reply.body);
    let port = match passive {
        Passive::Extended => epsv_port(&text),
        Passive::Classic => pasv_port(&text),
    };
    let port = port.ok_or_else(|| FtpPollError::Listing {
        path: String::new(),
        why: format!("cannot read a port in the {command} reply {text:?}"),
    })?;
    Ok(SocketAddr::new(peer.ip(), port))
}

/// `229 Entering Extended Passive Mode (|||6446|)`.
fn epsv_port(reply: &str) -> Option<u16> {
    let inside = reply.split_once('(')?.1.split_once(')')?.0;
    let delimiter = inside.chars().next()?;
    inside.split(delimiter).nth(3)?.parse().ok()
}

/// `227 Entering Passive Mode (127,0,0,1,25,46)`: the port is the last two numbers.
fn pasv_port(reply: &str) -> Option<u16> {
    // After the status code itself.
    let numbers: Vec<u16> = reply
        .trim_start()
        .get(3..)?
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let [.., hi, lo] = numbers[..] else {
        return None;
    };
    (hi <= 255 && lo <= 255).then_some(hi * 256 + lo)
}

/// Every line of the data connection, decoded lossily (names that are not UTF-8 are refused
/// later, as unsafe), then a clean close (TLS `close_notify`).
async fn read_lines<S>(stream: S, op: &str, timeout: Duration) -> Result<Vec<String>, FtpPollError>
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    let mut total = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = timed(op, timeout, async {
            reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(suppaftp::FtpError::ConnectionError)
        })
        .await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_LISTING_BYTES {
            return Err(FtpPollError::Listing {
                path: String::new(),
                why: format!("more than {} MiB of listing", MAX_LISTING_BYTES >> 20),
            });
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            lines.push(text.to_owned());
        }
    }
    let mut stream = reader.into_inner();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_replies() {
        assert_eq!(epsv_port("229 Entering Extended Passive Mode (|||6446|)"), Some(6446));
        assert_eq!(epsv_port("229 ok (!!!21000!)"), Some(21000));
        assert_eq!(epsv_port("229 nonsense"), None);
        assert_eq!(
            pasv_port("227 Entering Passive Mode (127,0,0,1,25,46)"),
            Some(25 * 256 + 46)
        );
        assert_eq!(pasv_port("227 Entering Passive Mode 10,0,0,7,4,1"), Some(1025));
        assert_eq!(pasv_port("227 nonsense"), None);
    }
}
