//! SSH transport (russh): connections, authentication, host-key
//! verification, ssh config — the [`crate::remote::Remote`] that reaches real
//! machines.
//!
//! - [`SshTarget`]: where to go (inventory values, then `~/.ssh/config` via
//!   [`SshTarget::apply_ssh_config`]).
//! - [`SshSession::connect`]: one authenticated connection per host, host
//!   key verified against known_hosts ([`known_hosts`]), identities in
//!   OpenSSH's order ([`auth`]: the agent's keys that are identity files,
//!   the files, the agent's others), optional `ProxyJump`, all under
//!   `connect_timeout`.
//! - Commands are channels on that connection (at most [`MAX_CHANNELS`] at
//!   once); a dead connection is replaced once, transparently, by the next
//!   command. Bulk streams (`exec_stream`) get a connection of their own; `exec_piped`
//!   streams share it.
//! - [`ConnectError`] says what went wrong and what to do about it.

pub mod auth;
pub mod config;
mod connect;
pub mod error;
mod exec;
mod hostkey;
pub mod known_hosts;
pub mod pattern;
mod session;
mod short_ecdsa;
pub mod target;

pub use auth::AuthMethod;
pub use config::{HostConfig, SshConfig};
pub use connect::{ConnectInfo, KEEPALIVE_MAX};
pub use error::{ConnectError, ConnectStage};
pub use hostkey::HostKeyStatus;
pub use session::{MAX_CHANNELS, SshSession};
pub use target::KEEPALIVE_INTERVAL;
pub use target::{HostKeyPolicy, SshTarget};
