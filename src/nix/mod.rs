//! Nix on the far side: store paths, and the Nix commands nixgate runs on the
//! builder and on hosts (evaluation, build, GC roots, closure queries, copy).
//! The controller itself never runs Nix.

pub mod store_path;

pub use store_path::StorePath;
