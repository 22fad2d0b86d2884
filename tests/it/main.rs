//! Integration tests: the real `dropsync` binary on temporary configs and folders.

mod arrivals;
mod audio;
mod balancer;
mod console;
mod crash;
mod ftp;
mod ftp_servers;
mod harness;
mod host_keys;
mod http_api;
mod isolation;
mod jsch;
mod minutes;
mod nodes;
mod ops;
mod packaging;
#[path = "../../src/catalog/pg_server.rs"]
mod pg_server;
mod pipeline;
mod poison;
mod quota;
mod readme;
mod retention;
mod s3;
mod sftp;
mod sftp_fs;
mod sftp_keys;
mod sshfs;
