//! SSH transport (russh): connections, authentication, host-key verification, ssh config.

pub mod config;
pub mod known_hosts;
pub mod pattern;
