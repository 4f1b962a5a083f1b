//! The inventory: the TOML file that names the builder, the hosts, their
//! settings and the waves; how it is read, validated (every problem reported
//! at once, each with `file:line:col`), and how selectors pick hosts from it.

pub mod diag;
pub mod duration;
pub mod glob;
pub mod limits;
pub mod load;
pub mod model;
pub mod scaleout;
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
    /// Read and validate the inventory at `path` (at most
    /// [`limits::MAX_INVENTORY_BYTES`], whatever kind of file it is).
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let source = read_bounded(path)?;
        load::parse(path, &source).map_err(InventoryError::Invalid)
    }

    /// Parse inventory text (for tests and tools); `path` is used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Inventory, Diagnostics> {
        load::parse(path, source)
    }
}

/// Read `path` as UTF-8 through a reader that stops one byte past the cap:
/// the file's reported size is not trusted (`/dev/zero`, a FIFO or
/// `/proc` files report 0 or nothing). Too large is a read error, so the
/// CLI reports it like a missing file (exit 2).
fn read_bounded(path: &Path) -> Result<String, InventoryError> {
    use std::io::Read;
    let read_err = |source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(limits::MAX_INVENTORY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits::MAX_INVENTORY_BYTES {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "it is larger than {} MiB, the most nixgate reads",
                limits::MAX_INVENTORY_BYTES / (1024 * 1024)
            ),
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ))
    })
}
