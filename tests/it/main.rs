//! Integration tests: the real server over real TLS (and plain HTTP where a
//! test says so), grouped by the boundary they cross.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

mod backbone;
mod crash;
mod crypto;
mod exhaustion;
mod gateway;
mod identity;
mod ids;
mod ops;
mod scale;
mod tasks;
mod tasks_multiuser;
mod traffic;
mod ws;
