//! The release record and its tag message format.
//!
//! A message is a human-readable header (`Key: value` lines for people and
//! `git show`), then the machine-readable record between two fence lines:
//!
//! ```text
//! nixgate release of web1 at 0123456789ab
//!
//! Host:      web1
//! ...
//!
//! -----BEGIN NIXGATE RELEASE v1-----
//! { ...pretty JSON of Record... }
//! -----END NIXGATE RELEASE v1-----
//! ```
//!
//! Only the JSON block is parsed back; the header is never read. JSON string
//! escaping keeps the fence lines unique (a value cannot contain a newline),
//! and the fence names the format version.

use serde::{Deserialize, Serialize};

use crate::gates::Gate;
use crate::nix::StorePath;

/// The gates a release passed, each with its evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub gates: Vec<GateEvidence>,
}

/// One gate passed and what proved it (diff summary, dry-activate units,
/// verification outcome, health checks, ...), as the gate's own serde data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateEvidence {
    pub gate: Gate,
    #[serde(default)]
    pub detail: serde_json::Value,
}

pub const BEGIN: &str = "-----BEGIN NIXGATE RELEASE v1-----";
pub const END: &str = "-----END NIXGATE RELEASE v1-----";

/// The machine-readable part of a release tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub target: String,
    /// Full hex commit id (checked against the tag's target when read).
    pub commit: String,
    pub closure: StorePath,
    pub builder: String,
    pub run_id: String,
    /// RFC 3339 UTC, whole seconds.
    pub time: String,
    pub time_unix_ns: u64,
    pub nixgate_version: String,
    /// The branch tip this release replaced by force, if it did.
    #[serde(default)]
    pub forced_from: Option<String>,
    pub evidence: Evidence,
}

/// Why a tag message has no readable record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no {BEGIN} ... {END} block in the tag message")]
    NoBlock,
    #[error("the release record is not valid: {0}")]
    Invalid(String),
}

impl Record {
    /// The full tag message: header, blank line, fenced JSON.
    pub fn to_message(&self) -> anyhow::Result<String> {
        let short = &self.commit[..super::name::SHORTREV_LEN.min(self.commit.len())];
        let gates: Vec<&str> = self
            .evidence
            .gates
            .iter()
            .map(|g| g.gate.as_str())
            .collect();
        let forced = match &self.forced_from {
            None => "no".to_owned(),
            Some(from) => format!("yes (the branch was at {from})"),
        };
        let json = serde_json::to_string_pretty(self)?;
        Ok(format!(
            "nixgate release of {target} at {short}\n\
             \n\
             Host:      {target}\n\
             Commit:    {commit}\n\
             Closure:   {closure}\n\
             Builder:   {builder}\n\
             Run:       {run}\n\
             Released:  {time}\n\
             Gates:     {gates}\n\
             Forced:    {forced}\n\
             nixgate:   {version}\n\
             \n\
             {BEGIN}\n{json}\n{END}\n",
            target = one_line(&self.target),
            commit = one_line(&self.commit),
            closure = self.closure,
            builder = one_line(&self.builder),
            run = one_line(&self.run_id),
            time = one_line(&self.time),
            gates = if gates.is_empty() {
                "(none recorded)".to_owned()
            } else {
                gates.join(", ")
            },
            version = self.nixgate_version,
        ))
    }

    /// Parse the fenced block back out of a tag message.
    pub fn from_message(message: &str) -> Result<Record, RecordError> {
        // The block is always last: taking the last BEGIN means no header text
        // can smuggle in a block of its own.
        let lines: Vec<&str> = message.lines().collect();
        let start = lines
            .iter()
            .rposition(|l| l.trim_end() == BEGIN)
            .ok_or(RecordError::NoBlock)?;
        let mut json = String::new();
        let mut closed = false;
        for line in &lines[start + 1..] {
            if line.trim_end() == END {
                closed = true;
                break;
            }
            json.push_str(line);
            json.push('\n');
        }
        if !closed {
            return Err(RecordError::NoBlock);
        }
        serde_json::from_str(&json).map_err(|e| RecordError::Invalid(e.to_string()))
    }
}

/// A header value on one line: control characters become `?`.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            target: "web1".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            closure: StorePath::parse(
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-24.05",
            )
            .unwrap(),
            builder: "builder1".into(),
            run_id: "20261122T203000Z-3f9a".into(),
            time: "2026-11-22T20:30:00Z".into(),
            time_unix_ns: 1_795_379_400_123_456_789,
            nixgate_version: "0.1.0".into(),
            forced_from: None,
            evidence: Evidence {
                gates: vec![
                    GateEvidence {
                        gate: Gate::Diff,
                        // A hostile value: fence text and newlines inside a string.
                        detail: serde_json::json!({"summary": format!("x\n{END}\n{BEGIN}")}),
                    },
                    GateEvidence {
                        gate: Gate::HealthChecks,
                        detail: serde_json::json!([{"check": "http", "ok": true}]),
                    },
                ],
            },
        }
    }

    #[test]
    fn message_round_trips() {
        let r = record();
        let msg = r.to_message().unwrap();
        assert!(msg.starts_with("nixgate release of web1 at 0123456789ab\n"));
        assert!(msg.contains(
            "Closure:   /nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-24.05\n"
        ));
        assert!(msg.contains("Gates:     diff, health-checks\n"));
        assert_eq!(Record::from_message(&msg).unwrap(), r);
    }

    #[test]
    fn header_values_cannot_inject_a_block() {
        let mut r = record();
        r.builder = format!("b\n{BEGIN}\n{{\"target\":\"evil\"}}\n{END}");
        let msg = r.to_message().unwrap();
        assert_eq!(msg.lines().filter(|l| *l == BEGIN).count(), 1);
        assert_eq!(Record::from_message(&msg).unwrap(), r);
    }

    #[test]
    fn missing_or_broken_blocks_are_errors() {
        assert_eq!(
            Record::from_message("just a tag"),
            Err(RecordError::NoBlock)
        );
        let open = format!("x\n{BEGIN}\n{{}}\n");
        assert_eq!(Record::from_message(&open), Err(RecordError::NoBlock));
        let bad = format!("x\n{BEGIN}\n{{\"target\": 1}}\n{END}\n");
        assert!(matches!(
            Record::from_message(&bad),
            Err(RecordError::Invalid(_))
        ));
    }
}
