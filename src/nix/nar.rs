//! The NAR wire format, as far as nixgate needs it: where a NAR ends in a
//! byte stream ([`NarScanner`], incremental, nothing buffered but its
//! tokens), and its strings ([`wire_string`]).
//!
//! A NAR is a sequence of strings (a little-endian `u64` length, the bytes,
//! zero padding to 8). Structure tokens (`(`, `)`, `type`, `entry`, ...)
//! alternate with data strings (file contents, names, link targets, the type
//! word); the archive ends when the parenthesis opened first closes. Only
//! the strings that follow `contents`, `target`, `name`, `executable` and
//! `type` are data, so a file named `)` cannot end an archive early.

/// `nix-archive-1`, the first string of every NAR.
const NAR_MAGIC: &[u8] = b"nix-archive-1";
/// The longest structure token (`nix-archive-1`, `executable`, ...) with room to spare.
const MAX_TOKEN: u64 = 64;

/// What is being read: a string's length, or its body and padding.
#[derive(Debug, Clone, Copy)]
enum Need {
    Len,
    Body { left: u64, capture: bool },
}

/// Finds the end of one NAR in a stream fed to it in arbitrary pieces.
#[derive(Debug)]
pub struct NarScanner {
    need: Need,
    /// Bytes of the length being read, or of a token being captured.
    small: Vec<u8>,
    /// The length of the token being captured (without padding).
    token_len: usize,
    started: bool,
    depth: u32,
    /// The next string is data, not a token.
    data_next: bool,
    consumed: u64,
    done: bool,
}

impl Default for NarScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl NarScanner {
    pub fn new() -> NarScanner {
        NarScanner {
            need: Need::Len,
            small: Vec::with_capacity(MAX_TOKEN as usize + 8),
            token_len: 0,
            started: false,
            depth: 0,
            data_next: false,
            consumed: 0,
            done: false,
        }
    }

    /// Bytes of the NAR seen so far (its whole size once it ended).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed the next bytes of the stream. Returns `Some(n)` when the NAR
    /// ended after the first `n` bytes of `buf` (the rest is not the NAR's),
    /// `None` when all of `buf` belonged to it and it goes on.
    pub fn feed(&mut self, buf: &[u8]) -> anyhow::Result<Option<usize>> {
        anyhow::ensure!(!self.done, "NAR scanner fed after the end of its NAR");
        let mut i = 0;
        while i < buf.len() {
            match self.need {
                Need::Len => {
                    let take = (8 - self.small.len()).min(buf.len() - i);
                    self.small.extend_from_slice(&buf[i..i + take]);
                    i += take;
                    if self.small.len() == 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.small);
                        self.small.clear();
                        self.start_string(u64::from_le_bytes(b))?;
                    }
                }
                Need::Body { left, capture } => {
                    let take = left.min((buf.len() - i) as u64) as usize;
                    if capture {
                        self.small.extend_from_slice(&buf[i..i + take]);
                    }
                    i += take;
                    let left = left - take as u64;
                    self.need = Need::Body { left, capture };
                    if left == 0 {
                        self.end_string()?;
                    }
                }
            }
            if self.done {
                self.consumed += i as u64;
                return Ok(Some(i));
            }
        }
        self.consumed += buf.len() as u64;
        Ok(None)
    }

    fn start_string(&mut self, len: u64) -> anyhow::Result<()> {
        let padded = len
            .checked_add(7)
            .map(|l| l & !7)
            .ok_or_else(|| anyhow::anyhow!("not a NAR: string length {len} overflows"))?;
        let capture = !self.data_next;
        if capture {
            anyhow::ensure!(
                len <= MAX_TOKEN,
                "not a NAR: a {len}-byte string where a token belongs (at byte {})",
                self.consumed
            );
            self.token_len = len as usize;
        }
        self.need = Need::Body {
            left: padded,
            capture,
        };
        if padded == 0 {
            self.end_string()?;
        }
        Ok(())
    }

    fn end_string(&mut self) -> anyhow::Result<()> {
        self.need = Need::Len;
        if self.data_next {
            self.data_next = false;
            return Ok(());
        }
        let token = std::mem::take(&mut self.small);
        let word = &token[..self.token_len.min(token.len())];
        if !self.started {
            anyhow::ensure!(
                word == NAR_MAGIC,
                "not a NAR: it starts with {:?}",
                String::from_utf8_lossy(word)
            );
            self.started = true;
        } else {
            match word {
                b"(" => self.depth += 1,
                b")" => {
                    anyhow::ensure!(self.depth > 0, "not a NAR: unbalanced ')'");
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.done = true;
                    }
                }
                b"type" | b"contents" | b"target" | b"name" | b"executable" => {
                    self.data_next = true
                }
                b"entry" | b"node" => {}
                other => anyhow::bail!(
                    "not a NAR: unexpected token {:?}",
                    String::from_utf8_lossy(other)
                ),
            }
        }
        self.small = token;
        self.small.clear();
        Ok(())
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// Serialise a string the way NARs and the serve protocol do.
pub fn wire_string(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 16);
    put_str(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file tree to serialise as a NAR.
    #[derive(Debug, Clone)]
    enum Node {
        File { exec: bool, contents: Vec<u8> },
        Link(Vec<u8>),
        Dir(Vec<(Vec<u8>, Node)>),
    }

    fn nar(node: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, NAR_MAGIC);
        node_into(&mut out, node);
        out
    }

    fn node_into(out: &mut Vec<u8>, node: &Node) {
        put_str(out, b"(");
        put_str(out, b"type");
        match node {
            Node::File { exec, contents } => {
                put_str(out, b"regular");
                if *exec {
                    put_str(out, b"executable");
                    put_str(out, b"");
                }
                put_str(out, b"contents");
                put_str(out, contents);
            }
            Node::Link(target) => {
                put_str(out, b"symlink");
                put_str(out, b"target");
                put_str(out, target);
            }
            Node::Dir(entries) => {
                put_str(out, b"directory");
                for (name, child) in entries {
                    put_str(out, b"entry");
                    put_str(out, b"(");
                    put_str(out, b"name");
                    put_str(out, name);
                    put_str(out, b"node");
                    node_into(out, child);
                    put_str(out, b")");
                }
            }
        }
        put_str(out, b")");
    }

    /// Names and contents that look like tokens, to prove they are data.
    fn tricky() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b")".to_vec()),
            Just(b"(".to_vec()),
            Just(b"entry".to_vec()),
            Just(b"nix-archive-1".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn tree() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            (any::<bool>(), tricky()).prop_map(|(exec, contents)| Node::File { exec, contents }),
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(exec, contents)| Node::File { exec, contents }),
            tricky().prop_map(Node::Link),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            proptest::collection::vec((tricky(), inner), 0..5).prop_map(Node::Dir)
        })
    }

    /// Feed `stream` in pieces of `cut` bytes; where did the NAR end?
    fn scan(stream: &[u8], cut: usize) -> anyhow::Result<Option<usize>> {
        let mut s = NarScanner::new();
        let mut at = 0;
        for piece in stream.chunks(cut.max(1)) {
            if let Some(n) = s.feed(piece)? {
                assert_eq!(s.consumed(), (at + n) as u64);
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    proptest! {
        #[test]
        fn finds_the_end_of_any_nar_in_any_pieces(t in tree(), cut in 1usize..700, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = nar(&t);
            let mut stream = n.clone();
            stream.extend_from_slice(&tail);
            prop_assert_eq!(scan(&stream, cut).unwrap(), Some(n.len()));
            // A NAR cut short never ends.
            prop_assert_eq!(scan(&n[..n.len() - 8], cut).unwrap(), None);
        }
    }

    #[test]
    fn a_file_named_like_a_paren_is_data() {
        let t = Node::Dir(vec![(
            b")".to_vec(),
            Node::File {
                exec: true,
                contents: b")".to_vec(),
            },
        )]);
        let n = nar(&t);
        assert_eq!(scan(&n, 3).unwrap(), Some(n.len()));
    }

    #[test]
    fn refuses_what_is_not_a_nar() {
        let mut bad = Vec::new();
        put_str(&mut bad, b"not-an-archive");
        assert!(scan(&bad, 8).unwrap_err().to_string().contains("not a NAR"));
        let mut big = Vec::new();
        put_str(&mut big, NAR_MAGIC);
        put_u64(&mut big, 1 << 40);
        assert!(scan(&big, 8).unwrap_err().to_string().contains("token"));
        let mut odd = Vec::new();
        put_str(&mut odd, NAR_MAGIC);
        put_str(&mut odd, b"(");
        put_str(&mut odd, b"bogus");
        assert!(
            scan(&odd, 5)
                .unwrap_err()
                .to_string()
                .contains("unexpected token")
        );
    }
}
