//! End-to-end tests: the release binary mounts buckets of a real S3 server on 127.0.0.1 and
//! ordinary tools work on the mount; what they see is compared with what the server holds.
//! Needs fuse3 and python3 (for the server); `.ci/run` installs both.

mod archive;
mod buckets;
mod cli;
mod cluster;
mod observe;
mod ops;
mod posix;
mod random_ops;
mod read;
mod round_trips;
mod security;
mod support;
mod tls;
mod trust;
mod write;
