//! nixgate: deploy NixOS and nix-darwin systems to a fleet over SSH, with no
//! agent on the hosts, through a sequence of gates of which only the last
//! earns the "known-good" label.
//!
//! Data flows one way: CLI -> [`plan`] -> [`runner`] -> per-host pipeline
//! ([`deploy`], [`activation`]) -> typed events ([`report::Event`]) ->
//! reporters ([`report`]). The deploy is written against [`fleet::Fleet`],
//! which hands out a [`remote::Remote`] per machine.

pub mod account;
pub mod activation;
pub mod cli;
pub mod deploy;
pub mod diff;
pub mod exec;
pub mod fleet;
pub mod gates;
pub mod inspect;
pub mod inventory;
pub mod keys;
pub mod nix;
pub mod notify;
pub mod plan;
pub mod process_group;
pub mod release;
pub mod remote;
pub mod report;
pub mod runner;
pub mod ssh;
pub mod state;
