//! Integration tests: the real `dropsync` binary on temporary configs and folders.

mod crash;
mod ftp;
mod harness;
mod ops;
mod pipeline;
mod s3;
mod sftp;
