//! Looking at the fleet without changing it: `status` (where each host
//! stands: running, boot default, known-good, its last run) and `check`
//! (the inventory is valid; every machine answers). Typed results, turned
//! into events by the commands and into words by the reporters.

pub mod bound;
pub mod history;
pub mod host_status;
pub mod probe;

use serde::{Deserialize, Serialize};

pub use host_status::{HostStatus, LastRun};
pub use probe::{Probe, WaveCount};

/// One problem with the inventory file, as `--json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryProblem {
    #[serde(serialize_with = "crate::report::json::lossy_path")]
    pub file: std::path::PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

/// The problems of an invalid inventory, in file order.
pub fn inventory_problems(d: &crate::inventory::Diagnostics) -> Vec<InventoryProblem> {
    d.items
        .iter()
        .zip(d.positions())
        .map(|(item, pos)| InventoryProblem {
            file: d.path.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: item.message.clone(),
            help: item.help.clone(),
        })
        .collect()
}
