//! The `--json` reporter: one event per line on stdout, nothing else.

use super::event::Event;
use super::{Reporter, json_line};

pub struct Json;

impl Reporter for Json {
    fn event(&mut self, ev: &Event) {
        json_line(ev);
    }
}

/// Serialize a path as a JSON string: a path that is not UTF-8 goes out
/// lossily (U+FFFD for each byte that is not), so every value holding one
/// still serializes (`#[serde(serialize_with = ...)]`).
pub fn lossy_path<S: serde::Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Check that `text` is one JSON value that a strict parser accepts: valid,
/// and no object with the same key twice (serde's internally tagged enums
/// can produce that when a tagged value wraps another; `serde_json::Value`
/// would silently keep the last). Every JSON nixgate writes is held to it.
pub fn check_strict(text: &str) -> Result<(), String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    Strict.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// Accepts any JSON value, refusing duplicate keys at any depth.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value without duplicate keys")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Strict)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_strict;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(check_strict(r#"{"a":1,"b":[{"c":null}]}"#).is_ok());
        assert!(check_strict(r#"{"kind":"switch","kind":"exited"}"#).is_err());
        assert!(check_strict(r#"[{"x":{"k":1,"k":2}}]"#).is_err());
        assert!(check_strict(r#"{"a":1} {"b":2}"#).is_err(), "one value");
        assert!(check_strict("{").is_err());
    }
}
