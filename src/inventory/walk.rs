//! A small typed walker over `toml`'s spanned document tree that collects
//! every problem (with its span) instead of stopping at the first.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diagnostic, suggest};
use super::duration;
use super::limits::{DurationLimit, SUGGESTION_BUDGET};

pub type Val<'i> = Spanned<DeValue<'i>>;

/// A value read from the file, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> At<T> {
    pub fn new(value: T, span: Range<usize>) -> Self {
        At { value, span }
    }
}

/// Collects diagnostics while reading.
pub struct Walker {
    pub diags: Vec<Diagnostic>,
    /// Comparisons "did you mean" may still make ([`SUGGESTION_BUDGET`]).
    suggestions_left: usize,
    /// Spans of values no error excerpt may show ([`super::Diagnostics::secrets`]).
    pub secrets: Vec<Range<usize>>,
}

impl Default for Walker {
    fn default() -> Self {
        Walker {
            diags: Vec::new(),
            suggestions_left: SUGGESTION_BUDGET,
            secrets: Vec::new(),
        }
    }
}

pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Walker {
    /// [`suggest`] within the load's budget: `None` once it is spent.
    pub fn suggest<'a>(&mut self, word: &str, candidates: &[&'a str]) -> Option<&'a str> {
        if candidates.len() > self.suggestions_left {
            self.suggestions_left = 0;
            return None;
        }
        self.suggestions_left -= candidates.len();
        suggest(word, candidates.iter().copied())
    }

    pub fn error(&mut self, message: impl Into<String>, span: Range<usize>) {
        self.diags.push(Diagnostic::new(message, span));
    }

    pub fn error_help(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        help: impl Into<String>,
    ) {
        self.diags.push(Diagnostic::new(message, span).help(help));
    }

    fn wrong_type(&mut self, key: &str, want: &str, v: &Val<'_>) {
        self.error(
            format!("`{key}` must be {want}, not {}", type_name(v.get_ref())),
            v.span(),
        );
    }

    /// Reject keys of `table` not in `allowed`, suggesting the closest one.
    pub fn check_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], section: &str) {
        self.check_keys_but(table, allowed, &[], section);
    }

    /// [`Walker::check_keys`], leaving alone the keys in `refused_elsewhere`
    /// (refused by the caller with a message of their own).
    pub fn check_keys_but(
        &mut self,
        table: &DeTable<'_>,
        allowed: &[&str],
        refused_elsewhere: &[&str],
        section: &str,
    ) {
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) && !refused_elsewhere.contains(&name) {
                // A misspelt or misplaced list or table (`kyes = [...]`,
                // `keys` in `[builder]`), or a key's `text` outside its
                // key, may hold a secret: not shown.
                if name == "text" || matches!(v.get_ref(), DeValue::Array(_) | DeValue::Table(_)) {
                    self.secrets.push(v.span());
                }
                let msg = format!("unknown key `{name}` in {section}");
                match self.suggest(name, allowed) {
                    Some(s) => self.error_help(msg, k.span(), format!("did you mean `{s}`?")),
                    None => self.error_help(
                        msg,
                        k.span(),
                        format!("allowed keys: {}", allowed.join(", ")),
                    ),
                }
            }
        }
    }

    pub fn table<'a, 'i>(&mut self, key: &str, v: &'a Val<'i>) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(key, "a table", v);
                None
            }
        }
    }

    pub fn string(&mut self, key: &str, v: &Val<'_>) -> Option<At<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(At::new(s.to_string(), v.span())),
            _ => {
                self.wrong_type(key, "a string", v);
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, v: &Val<'_>) -> Option<At<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At::new(*b, v.span())),
            _ => {
                self.wrong_type(key, "true or false", v);
                None
            }
        }
    }

    pub fn integer(&mut self, key: &str, v: &Val<'_>, min: i64, max: i64) -> Option<At<i64>> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, "an integer", v);
            return None;
        };
        let parsed = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok();
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(At::new(n, v.span())),
            _ => {
                self.error(
                    format!(
                        "`{key}` must be between {min} and {max}, not {}",
                        i.as_str()
                    ),
                    v.span(),
                );
                None
            }
        }
    }

    /// A duration within `limit`; out of range is an error naming the bound.
    pub fn duration(
        &mut self,
        key: &str,
        v: &Val<'_>,
        limit: DurationLimit,
    ) -> Option<At<Duration>> {
        let s = self.string(key, v)?;
        let d = match duration::parse(&s.value) {
            Ok(d) => d,
            Err(e) => {
                self.error_help(
                    format!("invalid duration for `{key}`: {e}"),
                    s.span,
                    "write e.g. \"10s\", \"5m\" or \"1h30m\"",
                );
                return None;
            }
        };
        if limit.positive && d.is_zero() {
            self.error(format!("`{key}` must be longer than zero"), s.span);
            return None;
        }
        if d > limit.max {
            self.error_help(
                format!(
                    "`{key}` = {:?} is longer than its maximum, {}",
                    s.value,
                    duration::format(limit.max)
                ),
                s.span,
                format!(
                    "write at most \"{}\" (each duration key has a maximum: see the inventory section of README.md)",
                    duration::format(limit.max)
                ),
            );
            return None;
        }
        Some(At::new(d, s.span))
    }

    pub fn choice<T>(
        &mut self,
        key: &str,
        v: &Val<'_>,
        names: &[&str],
        parse: fn(&str) -> Option<T>,
    ) -> Option<At<T>> {
        let s = self.string(key, v)?;
        match parse(&s.value) {
            Some(t) => Some(At::new(t, s.span)),
            None => {
                let help = match self.suggest(&s.value, names) {
                    Some(n) => format!("did you mean \"{n}\"?"),
                    None => format!("use one of: {}", names.join(", ")),
                };
                self.error_help(
                    format!(
                        "`{key}` must be one of {}, not {:?}",
                        names.join(" | "),
                        s.value
                    ),
                    s.span,
                    help,
                );
                None
            }
        }
    }

    pub fn array<'a, 'i>(&mut self, key: &str, v: &'a Val<'i>) -> Option<Vec<&'a Val<'i>>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a.iter().collect()),
            _ => {
                self.wrong_type(key, "an array", v);
                None
            }
        }
    }

    pub fn strings(&mut self, key: &str, v: &Val<'_>) -> Option<Vec<At<String>>> {
        let items = self.array(key, v)?;
        Some(
            items
                .into_iter()
                .filter_map(|i| self.string(key, i))
                .collect(),
        )
    }
}

/// The value under `key` in `table`, if present.
pub fn get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Val<'i>> {
    table
        .iter()
        .find(|(k, _)| {
            let name: &str = k.get_ref();
            name == key
        })
        .map(|(_, v)| v)
}

/// The span of `key` itself in `table`.
pub fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table
        .iter()
        .find(|(k, _)| {
            let name: &str = k.get_ref();
            name == key
        })
        .map(|(k, _)| k.span())
}
