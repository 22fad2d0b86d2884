//! Integration tests: the real `dropsync` binary on temporary configs and folders.

mod audio;
mod crash;
mod ftp;
mod ftp_servers;
mod harness;
mod isolation;
mod minutes;
mod ops;
mod pipeline;
mod quota;
mod s3;
mod sftp;
mod sftp_keys;
mod sshfs;
