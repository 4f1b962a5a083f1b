//! Nix on the far side: store paths, and the Nix commands nixgate runs on the
//! builder and on hosts (source shipping, evaluation and build, GC roots,
//! closure queries, copy, signing). The controller itself never runs Nix.

pub mod build;
pub mod builder_copy;
pub mod buildlog;
pub mod cache;
pub mod closure;
pub mod copy;
pub mod fanout;
#[cfg(test)]
mod fanout_stall_tests;
pub mod flake_build;
pub mod gcroots;
pub mod nar;
pub mod serve;
pub mod sign;
pub mod source;
pub mod space;
pub mod store_path;

pub use store_path::StorePath;
