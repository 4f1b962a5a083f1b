//! Host patterns on the command line: shell-style globs (`web*`, `db[12]`,
//! `?`), `@tag`, and colmena's comma lists (`--on 'web*,@db'`), so people
//! moving from colmena keep their habits. A pattern that matches nothing is
//! refused with the closest names, never silently skipped: a typo in an
//! ad-hoc fix must not shrink the set of hosts it reaches.

use super::diag::edit_distance;

/// Does the word use glob syntax (`*`, `?` or `[...]`)?
pub fn is_glob(word: &str) -> bool {
    word.contains(['*', '?', '['])
}

/// Shell-style match of the whole of `name` against `pattern`: `*` any run,
/// `?` one character, `[abc]`, `[a-z]`, `[!a]` (or `[^a]`) one of a class.
/// Case-sensitive, as inventory names are. A `[` without its `]` is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = name.chars().collect();
    matches_at(&p, &t)
}

fn matches_at(p: &[char], t: &[char]) -> bool {
    let Some(&first) = p.first() else {
        return t.is_empty();
    };
    match first {
        '*' => (0..=t.len()).any(|skip| matches_at(&p[1..], &t[skip..])),
        '?' => !t.is_empty() && matches_at(&p[1..], &t[1..]),
        '[' => match class(&p[1..]) {
            Some((set, len)) => {
                !t.is_empty() && set.contains(t[0]) && matches_at(&p[1 + len..], &t[1..])
            }
            None => t.first() == Some(&'[') && matches_at(&p[1..], &t[1..]),
        },
        c => t.first() == Some(&c) && matches_at(&p[1..], &t[1..]),
    }
}

/// A bracket class: its members and how many pattern characters it used
/// (through the closing `]`); `None` when it never closes.
struct Class {
    negated: bool,
    items: Vec<(char, char)>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

fn class(p: &[char]) -> Option<(Class, usize)> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let start = i;
    while i < p.len() {
        let c = p[i];
        // A `]` first in the class is a member, as in the shell.
        if c == ']' && i > start {
            return Some((Class { negated, items }, i + 1));
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            items.push((c, p[i + 2]));
            i += 3;
        } else {
            items.push((c, c));
            i += 1;
        }
    }
    None
}

/// One item of a selection list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A host name or a glob over host names.
    Host(String),
    /// `@tag`: every host with the tag.
    Tag(String),
}

/// Split colmena-style lists (`web*,@db`) into items; empty items are dropped.
pub fn parse_list(list: &str) -> Vec<Item> {
    list.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| match w.strip_prefix('@') {
            Some(tag) => Item::Tag(tag.to_owned()),
            None => Item::Host(w.to_owned()),
        })
        .collect()
}

/// Up to `n` candidates closest to `word` (glob characters ignored), nearest
/// first (ties in the order given: the inventory's), for "matches nothing"
/// errors.
pub fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let literal: String = word.chars().filter(|c| !"*?[]!^".contains(*c)).collect();
    let mut ranked: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(&literal, c), c))
        .collect();
    ranked.sort_by_key(|&(d, _)| d);
    ranked
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_the_shell() {
        assert!(glob_match("web*", "web1"));
        assert!(glob_match("web*", "web"));
        assert!(!glob_match("web*", "db1"));
        assert!(glob_match("db[12]", "db1"));
        assert!(glob_match("db[12]", "db2"));
        assert!(!glob_match("db[12]", "db3"));
        assert!(glob_match("db[1-3]", "db3"));
        assert!(!glob_match("db[!1-3]", "db3"));
        assert!(glob_match("db[!1-3]", "db4"));
        assert!(glob_match("?b1", "db1"));
        assert!(!glob_match("?b1", "b1"));
        assert!(glob_match("*-eu-*", "web-eu-1"));
        assert!(glob_match("a[b", "a[b"), "an unclosed class is literal");
        assert!(!glob_match("Web*", "web1"), "case-sensitive");
        assert!(glob_match("light1", "light1"));
        assert!(!glob_match("light1", "light10"));
    }

    #[test]
    fn lists_mix_names_globs_and_tags() {
        assert_eq!(
            parse_list("web*, @db,,db1"),
            vec![
                Item::Host("web*".into()),
                Item::Tag("db".into()),
                Item::Host("db1".into())
            ]
        );
    }

    #[test]
    fn closest_ranks_by_distance() {
        let names = ["web1", "web2", "db1", "mail"];
        assert_eq!(closest("wbe1", names, 2), vec!["web1", "web2"]);
        assert_eq!(closest("dc*", names, 1), vec!["db1"]);
    }
}
