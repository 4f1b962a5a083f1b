//! Output bytes to event text: UTF-8 split across SSH packets is carried
//! over to the next chunk, so a character is never cut in two; bytes that
//! are not UTF-8 at all become U+FFFD (events carry text, and every JSON
//! nixgate writes must parse).

/// Longest UTF-8 sequence, so the most a chunk can end in the middle of.
const MAX_SEQ: usize = 4;

/// One stream's decoder.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `bytes` (after what was held), holding back an
    /// incomplete character at the end.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let cut = incomplete_tail(&self.held);
        let rest = self.held.split_off(self.held.len() - cut);
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held = rest;
        text
    }

    /// Whatever is still held (the stream ended mid-character).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

/// How many bytes at the end of `b` start a character that is not complete.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(MAX_SEQ - 1) {
        let byte = b[b.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_is_whole() {
        let s = "héllo → wörld".as_bytes();
        for cut in 0..=s.len() {
            let mut d = Utf8Carry::default();
            let mut out = d.push(&s[..cut]);
            out.push_str(&d.push(&s[cut..]));
            out.push_str(&d.finish());
            assert_eq!(out, "héllo → wörld", "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Carry::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
