//! bucketfs: mount an S3 bucket as a directory.
//!
//! Layers, top to bottom: `cli`/`config` (what to mount, checked), `mount` (the process:
//! pre-mount checks, the FUSE session, signals), `fuse` (a thin adapter), `fs` (filesystem
//! semantics, generic over the store), `store` (S3 and an in-memory store).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod generate;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod mount_helper;
pub mod notify;
pub mod private_files;
pub mod store;
pub mod testdata;
pub mod uploads;
