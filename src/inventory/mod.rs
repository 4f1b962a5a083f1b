//! The inventory: the TOML file that names the builder, the hosts, their
//! settings and the waves; how it is read, validated (every problem reported
//! at once, each with `file:line:col`), and how selectors pick hosts from it.

pub mod diag;
pub mod duration;
pub mod load;
pub mod model;
pub mod select;
pub mod validate;
mod walk;

use std::path::Path;

pub use diag::Diagnostics;
pub use model::*;
pub use select::{Selection, Selector};

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "cannot read inventory {path}: {source}\n  (pass another file with -i/--inventory PATH; see inventory.example.toml)"
    )]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Inventory {
    /// Read and validate the inventory at `path`.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let source = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::parse(path, &source).map_err(InventoryError::Invalid)
    }

    /// Parse inventory text (for tests and tools); `path` is used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Inventory, Diagnostics> {
        load::parse(path, source)
    }
}
