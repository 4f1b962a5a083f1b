//! A run's kept events on disk while it runs: one compact JSON line each,
//! with the time it was emitted (`at_ms`), written as they arrive, read
//! back one at a time into the run report
//! ([`SpooledEvents`] serialises as the report's `events` array). Memory stays
//! flat however many hosts and however large their diffs.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::ser::{Error as _, SerializeSeq};

use super::Event;

/// The spool file being written.
pub struct Spool {
    path: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    broken: bool,
    /// Left on disk when dropped ([`Spool::keep`]).
    kept: bool,
}

impl Spool {
    pub fn create(path: PathBuf) -> anyhow::Result<Spool> {
        use anyhow::Context;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::File::create(&path)
            .with_context(|| format!("creating the event spool {}", path.display()))?;
        Ok(Spool {
            path,
            out: Some(BufWriter::new(file)),
            broken: false,
            kept: false,
        })
    }

    /// Append one event, stamped with the time it was emitted (`at_ms`,
    /// Unix milliseconds: a gate's start and end for the timeline and the
    /// metrics); after a write error the spool stops (and says so once).
    pub fn push(&mut self, ev: &Event, at_ms: u64) {
        let Some(out) = self.out.as_mut() else { return };
        let stamped = super::stored::Stamp {
            at_ms: Some(at_ms),
            event: ev,
        };
        // Flushed line by line: a run killed mid-way leaves every event
        // before the kill (`show` reads them from here).
        // Made whole first: a value that fails to serialize leaves no
        // half line behind.
        let written = serde_json::to_vec(&stamped)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                out.write_all(&line)
            })
            .and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::warn!(
                "writing the event spool {}: {e}; the run report will lack later events",
                self.path.display()
            );
            self.out = None;
            self.broken = true;
        }
    }

    /// Flush; what was written stays usable even if a write failed.
    pub fn finish(mut self) -> Option<Spool> {
        if let Some(out) = self.out.take()
            && let Err(e) = out.into_inner()
        {
            tracing::warn!("flushing the event spool {}: {e}", self.path.display());
            self.broken = true;
        }
        Some(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether events were lost (a write failed).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Leave the file on disk: the run report could not be written, and
    /// these are the run's only events (`runs::read` reads a spool left
    /// beside an unfinished report). Its path.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }
}

/// The spool is scratch: gone once the report is written (or the run ends),
/// unless kept.
impl Drop for Spool {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The spooled events as a JSON array, read line by line while serialising.
pub struct SpooledEvents<'a>(pub Option<&'a Spool>);

impl serde::Serialize for SpooledEvents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        if let Some(spool) = self.0 {
            let file = std::fs::File::open(&spool.path).map_err(S::Error::custom)?;
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(S::Error::custom)?;
                if line.is_empty() {
                    continue;
                }
                // A line cut short by a failed write is left out, not fatal.
                if let Ok(raw) = serde_json::value::RawValue::from_string(line) {
                    seq.serialize_element(&raw)?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_spool_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path().join("run.events")).unwrap();
        for i in 0..3 {
            spool.push(
                &Event::BuilderFailed {
                    error: format!("h{i}: a\nb \"quoted\""),
                },
                1_795_379_400_000 + i,
            );
        }
        let spool = spool.finish().unwrap();
        let v = serde_json::to_value(SpooledEvents(Some(&spool))).unwrap();
        let errors: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["error"].as_str().unwrap())
            .collect();
        assert_eq!(errors[0], "h0: a\nb \"quoted\"");
        assert!(errors[1].starts_with("h1") && errors[2].starts_with("h2"));
        assert_eq!(v[0]["event"], "builder_failed");
        assert_eq!(v[2]["at_ms"], 1_795_379_400_002u64, "{v}");
        assert!(!spool.is_broken());
        let path = spool.path().to_path_buf();
        drop(spool);
        assert!(!path.exists(), "the spool is scratch");
        assert_eq!(
            serde_json::to_value(SpooledEvents(None)).unwrap(),
            serde_json::json!([])
        );
    }
}
