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
///
/// Iterative, backtracking only to the last `*` (every other token takes
/// exactly one character): O(pattern x name). The recursive matcher before
/// it tried every split at every `*`, exponential in their number: a
/// selector like `*a*a*a*a*a*a*a*a*a*b` hung on a long name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p = tokens(pattern);
    let t: Vec<char> = name.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen: the token after it, and where in the name it
    // resumes when what follows fails.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Token::Star) => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(tok) if tok.takes(t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the `*` take one more character and try again.
                Some((after, from)) => {
                    star = Some((after, from + 1));
                    (pi, ti) = (after, from + 1);
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|tok| matches!(tok, Token::Star))
}

/// One element of a pattern.
enum Token {
    Star,
    Any,
    Class(Class),
    Literal(char),
}

impl Token {
    /// Does this one-character token take `c`? (`*` is handled apart.)
    fn takes(&self, c: char) -> bool {
        match self {
            Token::Star => false,
            Token::Any => true,
            Token::Class(set) => set.contains(c),
            Token::Literal(l) => *l == c,
        }
    }
}

fn tokens(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let (tok, used) = match p[i] {
            '*' => (Token::Star, 1),
            '?' => (Token::Any, 1),
            '[' => match class(&p[i + 1..]) {
                Some((set, len)) => (Token::Class(set), 1 + len),
                None => (Token::Literal('['), 1),
            },
            c => (Token::Literal(c), 1),
        };
        out.push(tok);
        i += used;
    }
    out
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
    fn stars_match_like_the_shell_too() {
        assert!(glob_match("*", ""));
        assert!(glob_match("**", "web1"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*[0-9]", "web1"));
        assert!(!glob_match("*[0-9]", "web"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("*[!0-9]", "web1x"));
        assert!(glob_match("*[b", "a[b"), "an unclosed class after a star");
        assert!(glob_match("[]a]*", "]x"), "`]` first is a member");
        assert!(glob_match("*-eu-*", "web-eu-eu-1"));
    }

    /// The matcher before this one, recursive (exponential in the stars):
    /// the reference for what the iterative one must answer.
    fn reference(p: &[char], t: &[char]) -> bool {
        let Some(&first) = p.first() else {
            return t.is_empty();
        };
        match first {
            '*' => (0..=t.len()).any(|skip| reference(&p[1..], &t[skip..])),
            '?' => !t.is_empty() && reference(&p[1..], &t[1..]),
            '[' => match class(&p[1..]) {
                Some((set, len)) => {
                    !t.is_empty() && set.contains(t[0]) && reference(&p[1 + len..], &t[1..])
                }
                None => t.first() == Some(&'[') && reference(&p[1..], &t[1..]),
            },
            c => t.first() == Some(&c) && reference(&p[1..], &t[1..]),
        }
    }

    /// Every word of up to `n` characters over `alphabet`.
    fn words(alphabet: &[char], n: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..n {
            last = (last.iter())
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_same_answers_as_the_recursive_matcher() {
        let patterns = words(&['a', 'b', '*', '?', '[', ']', '!'], 4);
        let names = words(&['a', 'b', '[', ']'], 5);
        for p in &patterns {
            let pc: Vec<char> = p.chars().collect();
            for t in &names {
                let tc: Vec<char> = t.chars().collect();
                assert_eq!(glob_match(p, t), reference(&pc, &tc), "{p:?} {t:?}");
            }
        }
    }

    /// Twenty stars before a mismatch on a 60-character name: the recursive
    /// matcher tried every way to split the name among them (~10^15), the
    /// iterative one takes microseconds. The bound only tells a hang apart.
    #[test]
    fn many_stars_do_not_hang() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pattern = format!("{}b", "a*".repeat(20));
            let _ = tx.send(glob_match(&pattern, &"a".repeat(60)));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(answer, Ok(false), "no answer in 20 s: exponential");
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
