//! dropsync takes in call recordings and their metadata from contact centres and forwards every
//! complete conversation to object storage.
//!
//! ```text
//!  SFTP server ─┐
//!  FTP poller  ─┼─► drop folder ─► catalog ─► matching ─► forwarding ─► sink (s3 | dir)
//!  local watch ─┘    (per tenant)  (SQLite)   (pure)      (durable queue)
//!                          ▲                                   │
//!                          └──────── reports ◄─────────────────┘
//! ```
//! Files travel one way: an ingress says a file has arrived ([`arrival::Arrived`]); [`intake`]
//! records it in the [`catalog`] and runs [`matching`] on metadata; [`forwarding`] drains the
//! catalog's durable queue into a sink; [`archive`] moves decided files out of the drop folders;
//! [`reports`] tells tenants what happened to each row.

pub mod addresses;
pub mod app;
pub mod archive;
pub mod arrival;
pub mod audio;
pub mod backoff;
pub mod catalog;
pub mod config;
pub mod confine;
pub mod console;
pub mod dropbox;
pub mod fault;
pub mod forwarding;
pub mod fsutil;
pub mod housekeeping;
pub mod ingress;
pub mod intake;
pub mod limits;
pub mod matching;
pub mod onboard;
pub mod ops;
pub mod reports;
pub mod secret;
pub mod tenant;
pub mod worker;
