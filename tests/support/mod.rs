//! Shared support for integration tests; each test crate uses only part of it.
#![allow(dead_code)]

pub mod cli;
pub mod fleet;
pub mod openssh;
pub mod sshd;
