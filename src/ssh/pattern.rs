//! OpenSSH host patterns, shared by `ssh_config` `Host` lines and
//! `known_hosts` host fields: `*` and `?` globs, `!` negation, lists.
//!
//! Matching is ASCII case-insensitive, as OpenSSH lowercases host names
//! before comparing them.

/// Does `text` match the glob `pattern` (`*` = any run, `?` = one character)?
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<u8> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let t: Vec<u8> = text.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// OpenSSH pattern-list semantics: a negated pattern (`!pat`) that matches
/// rejects the host outright; otherwise any positive pattern that matches
/// accepts it. A list with only negations matches nothing.
pub fn list_matches<'a, I>(patterns: I, host: &str) -> bool
where
    I: IntoIterator<Item = &'a str>,
{
    let mut matched = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) => {
                if glob(negated, host) {
                    return false;
                }
            }
            None => {
                if glob(pattern, host) {
                    matched = true;
                }
            }
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("*", ""));
        assert!(glob("web?", "web1"));
        assert!(!glob("web?", "web10"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("WEB*", "web-1"));
        assert!(glob("[10.0.0.*]:2222", "[10.0.0.7]:2222"));
        assert!(!glob("[10.0.0.*]:2222", "[10.0.0.7]:22"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn lists_with_negation() {
        assert!(list_matches(["*.lan", "!db.lan"], "web.lan"));
        assert!(!list_matches(["*.lan", "!db.lan"], "db.lan"));
        assert!(!list_matches(["!db.lan"], "web.lan"));
        assert!(list_matches(["a", "b"], "b"));
        assert!(!list_matches(["a", "b"], "c"));
    }
}
