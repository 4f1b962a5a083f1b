//! Diagnostics that point into the inventory file: `file:line:col`, the line,
//! a caret under the offending span, and a hint on what to do.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::limits::MAX_ERRORS_SHOWN;

/// One problem found in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// Byte range in the source; `None` for problems of the file as a whole.
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Diagnostic {
            message: message.into(),
            span: Some(span),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Everything wrong with one inventory file, ready to print.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
    /// Byte ranges of the source never shown: a key's inline `text` (and
    /// the value of any key a key table does not know, a misspelt `text`).
    /// An excerpt shows each of their characters as `*`.
    pub secrets: Vec<Range<usize>>,
}

/// Where each line of a source starts, built once: a byte offset's line is
/// a binary search instead of a scan from the top of the file.
///
/// Rendering used to scan from the start of the file for every error (the
/// line number, then `lines().nth()` for its text, then the span's end), and
/// so did `--json`'s positions: quadratic. Measured with the release build
/// on 2 shared cores (load 2-5), `check --offline` on 8,000 hosts with 2
/// errors each (167 KB): 16,000 errors took 7.0-10.7 s to print (13.8 s
/// with `--json`), 32,000 took 37-42 s. With the index and one sweep over
/// the sorted offsets, and only the first [`MAX_ERRORS_SHOWN`] printed in
/// full: 0.02-0.13 s and 0.04-0.15 s (`--json`, every error: 0.05 s).
pub struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            source
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { source, starts }
    }

    /// The 0-based line holding byte `offset` (clamped to the source).
    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset) - 1
    }

    /// The byte range of 0-based `line`, without its `\n` (or `\r\n`).
    fn line_range(&self, line: usize) -> Range<usize> {
        let start = self.starts[line];
        let end = self
            .starts
            .get(line + 1)
            .map_or(self.source.len(), |next| next - 1);
        let text = &self.source[start..end];
        start..start + text.strip_suffix('\r').unwrap_or(text).len()
    }

    /// 1-based line and column (in characters) of each offset, in one sweep
    /// over them in order: O(n + k log k) for k offsets into n bytes.
    pub fn line_cols(&self, offsets: &[usize]) -> Vec<(usize, usize)> {
        let mut order: Vec<usize> = (0..offsets.len()).collect();
        order.sort_by_key(|&i| offsets[i]);
        let mut out = vec![(0, 0); offsets.len()];
        let (mut line, mut byte, mut col) = (usize::MAX, 0, 1);
        for i in order {
            let off = floor_char_boundary(self.source, offsets[i].min(self.source.len()));
            let l = self.line_of(off);
            if l != line {
                (line, byte, col) = (l, self.starts[l], 1);
            }
            col += self.source[byte..off].chars().count();
            byte = off;
            out[i] = (line + 1, col);
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(source).line_cols(&[offset])[0]
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The most of one source line shown under an error; a longer line (a
/// minified file, one huge array) is cut to a window around the error.
const MAX_LINE_SHOWN: usize = 160;

/// What of a line is shown: the text, and the caret's start and width in
/// characters of that text.
struct Excerpt<'a> {
    before: &'static str,
    text: std::borrow::Cow<'a, str>,
    after: &'static str,
    pad: usize,
    width: usize,
}

fn excerpt<'a>(
    source: &'a str,
    line: Range<usize>,
    span: &Range<usize>,
    secrets: &[Range<usize>],
) -> Excerpt<'a> {
    let at = floor_char_boundary(source, span.start.clamp(line.start, line.end));
    let (from, to) = if line.len() <= MAX_LINE_SHOWN {
        (line.start, line.end)
    } else {
        let from = floor_char_boundary(
            source,
            at.saturating_sub(MAX_LINE_SHOWN / 4).max(line.start),
        );
        (
            from,
            ceil_char_boundary(source, (from + MAX_LINE_SHOWN).min(line.end)),
        )
    };
    let end = ceil_char_boundary(source, span.end.clamp(at, to));
    let before = if from > line.start { "…" } else { "" };
    Excerpt {
        before,
        text: masked(source, from..to, secrets),
        after: if to < line.end { "…" } else { "" },
        pad: before.chars().count() + source[from..at].chars().count(),
        width: source[at..end].chars().count().max(1),
    }
}

/// `source[shown]` with every character inside a secret range as `*`, one
/// for one, so the caret's columns stay those of the file.
fn masked<'a>(
    source: &'a str,
    shown: Range<usize>,
    secrets: &[Range<usize>],
) -> std::borrow::Cow<'a, str> {
    let text = &source[shown.clone()];
    let hit = |at: usize| secrets.iter().any(|r| r.contains(&at));
    if !secrets
        .iter()
        .any(|r| r.start < shown.end && shown.start < r.end)
    {
        return text.into();
    }
    text.char_indices()
        .map(|(i, c)| if hit(shown.start + i) { '*' } else { c })
        .collect::<String>()
        .into()
}

/// Where a source that did not parse may hold a key's inline secret: on
/// every line with a `text` key, what follows its `=`, to the end of a
/// multi-line string that starts there. (The parsed tree, which names the
/// values exactly, is not there when the syntax is wrong.)
pub fn text_assignments(source: &str) -> Vec<Range<usize>> {
    let index = LineIndex::new(source);
    let mut found = Vec::new();
    for line in 0..index.starts.len() {
        let r = index.line_range(line);
        let l = &source[r.clone()];
        let mut from = 0;
        while let Some(i) = l[from..].find("text").map(|i| from + i) {
            from = i + 4;
            let before = l[..i].chars().next_back();
            let bare = before.is_none_or(|c| " \t{,.\"'".contains(c));
            let rest = l[from..].trim_start_matches(['"', '\'']).trim_start();
            if bare && rest.starts_with('=') {
                let at = r.start + (l.len() - rest.len()) + 1;
                found.push(at..multi_line_end(source, at).unwrap_or(r.end));
                break;
            }
        }
    }
    found
}

/// Where a multi-line string (`"""` or `'''`) starting at `at` (after
/// spaces) ends: past its closing quotes, or the end of the source.
fn multi_line_end(source: &str, at: usize) -> Option<usize> {
    let value = source[at..].trim_start();
    let start = source.len() - value.len();
    let quotes = ["\"\"\"", "'''"]
        .into_iter()
        .find(|q| value.starts_with(q))?;
    let body = start + 3;
    Some(
        source[body..]
            .find(quotes)
            .map_or(source.len(), |e| body + e + 3),
    )
}

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Position of each diagnostic, for tests and JSON output.
    pub fn positions(&self) -> Vec<Option<(usize, usize)>> {
        positions(&LineIndex::new(&self.source), &self.items)
    }

    fn render_one(
        &self,
        index: &LineIndex<'_>,
        d: &Diagnostic,
        pos: Option<(usize, usize)>,
        f: &mut fmt::Formatter<'_>,
    ) -> fmt::Result {
        writeln!(f, "error: {}", d.message)?;
        let (Some(span), Some((line, col))) = (&d.span, pos) else {
            writeln!(f, "  --> {}", self.path.display())?;
            if let Some(help) = &d.help {
                writeln!(f, "  = help: {help}")?;
            }
            return Ok(());
        };
        let ex = excerpt(
            &self.source,
            index.line_range(line - 1),
            span,
            &self.secrets,
        );
        let gutter = line.to_string().len();
        writeln!(
            f,
            "{:gutter$}--> {}:{line}:{col}",
            "",
            display_path(&self.path)
        )?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{line} | {}{}{}", ex.before, ex.text, ex.after)?;
        writeln!(
            f,
            "{:gutter$} | {:pad$}{}",
            "",
            "",
            "^".repeat(ex.width),
            pad = ex.pad
        )?;
        if let Some(help) = &d.help {
            writeln!(f, "{:gutter$} = help: {help}", "")?;
        }
        Ok(())
    }
}

/// The 1-based position of each item's span start (`None`: no span).
fn positions(index: &LineIndex<'_>, items: &[Diagnostic]) -> Vec<Option<(usize, usize)>> {
    let offsets: Vec<usize> = items
        .iter()
        .filter_map(|d| d.span.as_ref().map(|s| s.start))
        .collect();
    let mut found = index.line_cols(&offsets).into_iter();
    items
        .iter()
        .map(|d| d.span.as_ref().and_then(|_| found.next()))
        .collect()
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}

/// The first [`MAX_ERRORS_SHOWN`] in full (the loader sorts them by
/// position), then how many more there are, then the total.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = LineIndex::new(&self.source);
        let shown = &self.items[..self.items.len().min(MAX_ERRORS_SHOWN)];
        for (i, (d, pos)) in shown.iter().zip(positions(&index, shown)).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            self.render_one(&index, d, pos, f)?;
        }
        let n = self.items.len();
        if n > shown.len() {
            write!(
                f,
                "\n... and {} more error{} (only the first {MAX_ERRORS_SHOWN} are shown: fix these and run again)\n",
                n - shown.len(),
                if n - shown.len() == 1 { "" } else { "s" },
            )?;
        }
        write!(
            f,
            "\n{} error{} in {}",
            n,
            if n == 1 { "" } else { "s" },
            self.path.display()
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate within a small edit distance, for "did you mean".
/// The distance is at least the difference in length, so a candidate too
/// long or too short is skipped without computing it (a megabyte-long
/// unknown key costs nothing, instead of a table of a megabyte times the
/// candidate's length).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    let word_len = word.chars().count();
    for c in candidates {
        let c_len = c.chars().count();
        let limit = (word_len.max(c_len) / 3).max(1);
        if word_len.abs_diff(c_len) > limit {
            continue;
        }
        let d = edit_distance(word, c);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and transpositions of neighbours each cost one (`wbe2` is 1 from `web2`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 7), (2, 2));
    }

    #[test]
    fn renders_caret_under_span() {
        let src = "[hosts.web1]\nadress = \"x\"\n".to_string();
        let d = Diagnostics {
            path: "inv.toml".into(),
            source: src,
            items: vec![
                Diagnostic::new("unknown key `adress`", 13..19).help("did you mean `address`?"),
            ],
            secrets: Vec::new(),
        };
        let text = d.to_string();
        assert!(text.contains("--> inv.toml:2:1"), "{text}");
        assert!(text.contains("2 | adress = \"x\""), "{text}");
        assert!(text.contains("  | ^^^^^^\n"), "{text}");
        assert!(text.contains("= help: did you mean `address`?"), "{text}");
    }

    /// The scan every error used to do, as the reference.
    fn scan(source: &str, offset: usize) -> (usize, usize) {
        let before = &source[..floor_char_boundary(source, offset.min(source.len()))];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        )
    }

    proptest::proptest! {
        /// One sweep gives what a scan per offset gave, in any order of
        /// offsets, inside multi-byte characters and past the end.
        #[test]
        fn line_cols_match_a_scan(
            src in "[aé\n\r]{0,60}",
            offsets in proptest::collection::vec(0usize..140, 0..12),
        ) {
            let got = LineIndex::new(&src).line_cols(&offsets);
            let want: Vec<_> = offsets.iter().map(|&o| scan(&src, o)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("adress", ["address", "port"]), Some("address"));
        assert_eq!(suggest("zzz", ["address", "port"]), None);
        assert_eq!(suggest("wbe2", ["web2", "db1"]), Some("web2"));
        let long = "a".repeat(1 << 20);
        assert_eq!(suggest(&long, ["address", "port"]), None);
    }
}
