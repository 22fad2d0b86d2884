//! Everything that makes a file arrive in a drop folder. Each ingress only says "this file has
//! arrived" ([`IngressEvent::Arrived`]); it never parses or matches anything.
//!
//! Today: [`watch`], which sees files that any process closes or renames into a drop folder.
//! The SFTP server and the FTP poller plug in here with the same event.

pub mod watch;

use crate::catalog::Via;
use crate::dropbox::RelPath;
use crate::tenant::TenantId;

/// A file whose writer is done: closed after writing, or renamed to its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub tenant: TenantId,
    pub rel: RelPath,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressEvent {
    Arrived(Arrived),
    /// Events may have been lost (watch queue overflow): reconcile every drop folder.
    Rescan,
}
