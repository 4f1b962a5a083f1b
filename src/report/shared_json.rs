//! JSON text kept in pieces, identical pieces shared between values: how a
//! gate's evidence is held while a run goes on.
//!
//! Why: every host's diff gate record lives from the diff gate to the end of
//! the run (the known-good mark carries it, and the host's summary the
//! mark). For a 300-path change that is about 110 KB of compact JSON a host,
//! and between hosts the records differ only where a path of the host's own
//! is named (its toplevel, its `etc`, their sizes): 500 hosts held 55 MB of
//! nearly the same text. Cut at content-defined boundaries (a gear hash over
//! the last 64 bytes, as backup tools cut files), the same stretch of text
//! gives the same pieces in every record, whatever comes before it, and a
//! [`PieceStore`] keeps one copy of each. See BENCHMARKS.md ("Controller
//! memory") for what that did to the controller's peak.
//!
//! A value read back from a file stays one piece ([`SharedJson::from`] a raw
//! value); pieces are joined only to be written, and the text written is the
//! same either way.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::ser::Error as _;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Valid JSON text, whole or in pieces that other values may share. Cheap
/// to clone.
#[derive(Clone)]
pub struct SharedJson(Repr);

#[derive(Clone)]
enum Repr {
    Whole(Arc<RawValue>),
    Pieces(Arc<[Arc<str>]>),
}

impl SharedJson {
    /// `value` as one piece of compact JSON (`null` if it cannot be
    /// serialised).
    pub fn of(value: &impl Serialize) -> SharedJson {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        RawValue::from_string(text)
            .unwrap_or_else(|_| RawValue::NULL.to_owned())
            .into()
    }

    /// The text (joined when in pieces).
    pub fn get(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Whole(raw) => Cow::Borrowed(raw.get()),
            Repr::Pieces(pieces) => Cow::Owned(pieces.concat()),
        }
    }
}

impl From<Box<RawValue>> for SharedJson {
    fn from(raw: Box<RawValue>) -> SharedJson {
        SharedJson(Repr::Whole(raw.into()))
    }
}

impl Serialize for SharedJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Whole(raw) => raw.serialize(s),
            Repr::Pieces(pieces) => RawValue::from_string(pieces.concat())
                .map_err(S::Error::custom)?
                .serialize(s),
        }
    }
}

impl fmt::Debug for SharedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedJson").field(&self.get()).finish()
    }
}

/// The pieces handed out so far: each distinct piece once. Kept while
/// values that resemble each other are made (one run's diff gate), then
/// dropped; the pieces live on in the values.
#[derive(Default)]
pub struct PieceStore {
    known: HashSet<Arc<str>>,
}

impl PieceStore {
    /// `value` as compact JSON in pieces, sharing every piece this store
    /// has handed out before (`null` if it cannot be serialised).
    pub fn share(&mut self, value: &impl Serialize) -> SharedJson {
        let Ok(text) = serde_json::to_string(value) else {
            return SharedJson::of(&());
        };
        let pieces = cut(&text).map(|p| self.intern(p)).collect();
        SharedJson(Repr::Pieces(pieces))
    }

    fn intern(&mut self, piece: &str) -> Arc<str> {
        if let Some(known) = self.known.get(piece) {
            return known.clone();
        }
        let new: Arc<str> = piece.into();
        self.known.insert(new.clone());
        new
    }
}

/// Pieces are at least this long (bytes), unless the text is shorter...
const MIN_PIECE: usize = 64;
/// ... and at most this long.
const MAX_PIECE: usize = 4096;
/// A piece ends where the hash's top 9 bits are zero: about every 512
/// bytes after the minimum. Smaller pieces share more (a host's own path
/// spoils less text around it) but cost a pointer each.
const CUT_MASK: u64 = !0 << (64 - 9);

/// `text` cut where the bytes just before say so (a gear hash: each byte
/// shifts the hash left and adds its random word, so the top bits depend on
/// the last 64 bytes only). Never inside a UTF-8 character.
fn cut(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let (mut start, mut hash, mut at) = (0, 0u64, 0);
    std::iter::from_fn(move || {
        while at < bytes.len() {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(bytes[at])]);
            at += 1;
            let len = at - start;
            let whole_char = bytes.get(at).is_none_or(|b| b & 0xC0 != 0x80);
            if whole_char && (len >= MAX_PIECE || (len >= MIN_PIECE && hash & CUT_MASK == 0)) {
                let piece = &text[start..at];
                start = at;
                return Some(piece);
            }
        }
        (start < bytes.len()).then(|| {
            let piece = &text[start..];
            start = bytes.len();
            piece
        })
    })
}

/// A fixed random word for each byte value (splitmix64).
const GEAR: [u64; 256] = gear();

const fn gear() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut x: u64 = 0;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests;
