//! Events as a run stores them, and read back: each spooled event carries
//! the time it was emitted (`at_ms`, Unix milliseconds, a key next to
//! `event`), which gives every gate a start and an end for the timeline and
//! the metrics. `show`, `report` and the metrics read them back as typed
//! [`Event`]s; an event this build cannot read (another version wrote it)
//! is counted and skipped, never fatal. Also here: the serde plumbing a
//! few types need to be read back at all.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::Event;
use crate::activation::known_good::Evidence;

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event as the spool writes it: `{"at_ms": ..., "event": ..., ...}`.
#[derive(Serialize)]
pub struct Stamp<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    #[serde(flatten)]
    pub event: &'a Event,
}

/// An event read back, with its time when it has one (reports written
/// before events were stamped have none).
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub at_ms: Option<u64>,
    pub event: Event,
}

/// A stored event this build could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// Its `event` tag, if it had one.
    pub kind: Option<String>,
    pub error: String,
}

/// Read one stored event (a line of the spool, an element of the report's
/// `events`).
pub fn parse_event(text: &str) -> Result<Stamped, Unreadable> {
    #[derive(Deserialize)]
    struct Head {
        at_ms: Option<u64>,
        event: Option<String>,
    }
    let head: Head = serde_json::from_str(text).map_err(|e| Unreadable {
        kind: None,
        error: e.to_string(),
    })?;
    match serde_json::from_str::<Event>(text) {
        Ok(event) => Ok(Stamped {
            at_ms: head.at_ms,
            event,
        }),
        Err(e) => Err(Unreadable {
            kind: head.event,
            error: e.to_string(),
        }),
    }
}

/// `&'static str` by another name: serde borrows a field written `&str`
/// from its input, which a `'static` one cannot be; with [`static_str`] it
/// is read as an owned string instead.
pub type StaticStr = &'static str;

/// A `&'static str` field read back (a failed step's name): each distinct
/// name is allocated once for the process and shared after that, so reading
/// many reports does not grow memory with every event.
pub fn static_str<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let s = String::deserialize(d)?;
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(s.as_str()) {
        return Ok(known);
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    names.insert(leaked);
    Ok(leaked)
}

/// serde_json's name for its raw values: asked for by this name, its
/// deserializer hands over the value's text as it is. Any other
/// deserializer (serde's buffer for an internally tagged enum, which every
/// stored event goes through) hands over the value itself, which is then
/// written back as compact JSON: if serde_json ever renames this, reading
/// evidence still works, only with keys in sorted order.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A gate's evidence (JSON text) read back: its exact text straight from a
/// JSON file (a host's known-good record), or re-serialised from inside a
/// stored event, where a raw value cannot be had.
pub fn evidence<'de, D: Deserializer<'de>>(d: D) -> Result<Evidence, D::Error> {
    struct Raw;
    impl<'de> Visitor<'de> for Raw {
        type Value = Evidence;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        // serde_json: one entry whose value is the text.
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Evidence, M::Error> {
            map.next_key::<de::IgnoredAny>()?
                .ok_or_else(|| de::Error::custom("empty raw value"))?;
            let text: String = map.next_value()?;
            serde_json::value::RawValue::from_string(text)
                .map(Into::into)
                .map_err(de::Error::custom)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Evidence, D::Error> {
            let value = serde_json::Value::deserialize(d)?;
            Ok(crate::activation::known_good::Evidence::of(&value))
        }
    }
    d.deserialize_newtype_struct(RAW_VALUE_TOKEN, Raw)
}

#[cfg(test)]
pub mod fixture;
#[cfg(test)]
mod tests;
