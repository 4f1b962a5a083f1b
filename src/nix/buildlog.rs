//! Nix's machine-readable log (`--log-format internal-json`, the same on Nix
//! 2.8 through current and on Lix): progress counts for the live view, and a
//! plain-text tail of messages and build log lines for error reports.
//!
//! Each log line is `@nix ` followed by one JSON object. Activity type 104
//! (`actBuilds`) reports `resProgress` (105) results `[done, expected,
//! running, failed]`: the derivations built so far out of those to build.
//!
//! Which machine builds what: an `actBuild` (105) activity starts with the
//! fields `[drv, machine, round, rounds]`, `machine` being `""` on the
//! builder itself and the remote builder's store URI when Nix's build hook
//! sent the derivation there (`"ssh://root@10.0.0.5"`). Nix 2.8 and 2.26
//! print the same fields (2.26 adds `"parent"`).
//!
//! Copies (`nix copy --to`, the cache push): an `actCopyPaths` (103)
//! activity whose text is `copying N paths`, then one `actCopyPath` (100)
//! activity per path, fields `[path, from, to]`, stopped when the path is
//! there. Nix 2.8 reports no byte counts for a copy to a binary cache (2.26
//! does), so bytes are counted by the caller from the paths' NAR sizes.

use std::collections::VecDeque;

use serde::Deserialize;

const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const ACT_COPY_PATH: u64 = 100;
const ACT_COPY_PATHS: u64 = 103;
const RES_PROGRESS: u64 = 105;
const RES_BUILD_LOG_LINE: u64 = 101;

/// Derivation counts of a running build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub done: u64,
    pub expected: u64,
    pub running: u64,
    pub failed: u64,
}

/// What a log line told, when it told something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// The derivation counts changed.
    Progress(Counts),
    /// A derivation started building: on the builder itself (`machine`
    /// `None`) or on this remote builder.
    Building {
        drv: String,
        machine: Option<String>,
    },
    /// A copy of this many paths started.
    CopyPlanned { paths: u64 },
    /// One path was copied.
    Copied { path: String },
}

#[derive(Deserialize)]
struct Line {
    action: String,
    #[serde(default)]
    id: u64,
    #[serde(default, rename = "type")]
    kind: u64,
    #[serde(default)]
    fields: Vec<serde_json::Value>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    level: Option<u64>,
    #[serde(default)]
    text: Option<String>,
}

/// Accumulates one build's log: progress and the last lines worth showing.
#[derive(Debug)]
pub struct BuildLog {
    builds_activity: Option<u64>,
    /// Running `actCopyPath` activities: id -> path.
    copying: std::collections::HashMap<u64, String>,
    counts: Counts,
    tail: VecDeque<String>,
    keep: usize,
}

impl BuildLog {
    pub fn new(keep: usize) -> Self {
        BuildLog {
            builds_activity: None,
            copying: std::collections::HashMap::new(),
            counts: Counts::default(),
            tail: VecDeque::new(),
            keep,
        }
    }

    /// Feed one line of the merged output. Returns what it told (progress
    /// that changed, a build starting, a path copied); `Err(line)` hands
    /// back a line that is not log (the command's own stdout).
    pub fn feed<'a>(&mut self, line: &'a str) -> Result<Option<Logged>, &'a str> {
        let Some(json) = line.strip_prefix("@nix ") else {
            return Err(line);
        };
        let Ok(l) = serde_json::from_str::<Line>(json) else {
            self.push(json.to_owned());
            return Ok(None);
        };
        match l.action.as_str() {
            "start" if l.kind == ACT_BUILDS => {
                self.builds_activity = Some(l.id);
                Ok(None)
            }
            "start" if l.kind == ACT_BUILD => {
                let field = |i: usize| l.fields.get(i).and_then(|v| v.as_str());
                Ok(field(0).map(|drv| Logged::Building {
                    drv: drv.to_owned(),
                    machine: field(1).filter(|m| !m.is_empty()).map(str::to_owned),
                }))
            }
            "start" if l.kind == ACT_COPY_PATHS => Ok(l
                .text
                .as_deref()
                .and_then(|t| t.strip_prefix("copying "))
                .and_then(|t| t.strip_suffix(" paths"))
                .and_then(|n| n.parse().ok())
                .map(|paths| Logged::CopyPlanned { paths })),
            "start" if l.kind == ACT_COPY_PATH => {
                if let Some(p) = l.fields.first().and_then(|v| v.as_str()) {
                    self.copying.insert(l.id, p.to_owned());
                }
                Ok(None)
            }
            "stop" => Ok(self
                .copying
                .remove(&l.id)
                .map(|path| Logged::Copied { path })),
            "result" if l.kind == RES_PROGRESS && Some(l.id) == self.builds_activity => {
                let n = |i: usize| l.fields.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
                let c = Counts {
                    done: n(0),
                    expected: n(1),
                    running: n(2),
                    failed: n(3),
                };
                if c == self.counts {
                    return Ok(None);
                }
                self.counts = c;
                Ok(Some(Logged::Progress(c)))
            }
            "result" if l.kind == RES_BUILD_LOG_LINE => {
                if let Some(s) = l.fields.first().and_then(|v| v.as_str()) {
                    self.push(s.to_owned());
                }
                Ok(None)
            }
            // Errors and warnings (level 0/1) and notices (up to 3, e.g.
            // "these 2 derivations will be built").
            "msg" if l.level.unwrap_or(0) <= 3 => {
                if let Some(m) = l.msg {
                    for part in strip_ansi(&m).lines() {
                        self.push(part.to_owned());
                    }
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn push(&mut self, line: String) {
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The retained log as plain text, one line each.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.tail {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// Words in a Nix log that say a disk filled, most telling first:
///
/// - `No space left on device`: ENOSPC in glibc's words, from Nix itself
///   (`error: writing to file: No space left on device`, Nix 2.8 and 2.26,
///   when a path, a build log or its database cannot be written) or from a
///   builder (`head: error writing 'standard output': No space left on
///   device`, quoted by Nix as `> ...` in a failed build's last lines);
/// - `database or disk is full`: SQLite's SQLITE_FULL (Nix's database,
///   `executing SQLite statement '...': database or disk is full`);
/// - `Disk quota exceeded`: EDQUOT, a quota on the store's file system;
/// - Nix's own guess after a builder failed with under 8 MiB free in the
///   store or the build directory: `note: build failure may have been
///   caused by lack of free disk space` (the same words in 2.8 and 2.26).
const OUT_OF_SPACE: [&str; 4] = [
    "no space left on device",
    "database or disk is full",
    "disk quota exceeded",
    "may have been caused by lack of free disk space",
];

/// The line of a Nix log (plain text, one message a line) that says the
/// disk filled, in Nix's or the builder's words; `None` when none does.
/// The last such line of the most telling kind, without Nix's `error:`,
/// `note:` or `> ` (a quoted build log line) in front.
pub fn out_of_space(log: &str) -> Option<String> {
    OUT_OF_SPACE.iter().find_map(|words| {
        log.lines()
            .rev()
            .find(|l| l.to_lowercase().contains(words))
            .map(|l| {
                let l = l.trim().trim_start_matches('>').trim_start();
                let l = l.strip_prefix("error:").unwrap_or(l);
                l.strip_prefix("note:").unwrap_or(l).trim().to_owned()
            })
    })
}

/// The line of a Nix log saying its database had an I/O error (SQLite's
/// "disk I/O error", any SQLITE_IOERR): on a disk full to the last byte
/// Nix cannot open its database (SQLite cannot grow its shared-memory
/// file; Nix's 8 MiB `gc-reserved-space` is taken again before the
/// database is opened, so removing it frees nothing) and says only this.
/// A failing disk says the same: only a measure of the store tells them
/// apart.
pub fn database_io_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| l.contains("disk I/O error"))
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("error:").unwrap_or(l).trim().to_owned()
        })
}

/// Remove terminal colour escapes (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Nix 2.8 prints them for `nix-build -A a -A b`.
    const LOG: &str = r#"@nix {"action":"msg","level":3,"msg":"these 2 derivations will be built:"}
@nix {"action":"start","id":90181428314115,"level":0,"text":"","type":104}
@nix {"action":"start","id":90181428314116,"level":0,"text":"","type":103}
@nix {"action":"result","fields":[0,1,0,0],"id":90181428314115,"type":105}
@nix {"action":"result","fields":[0,0,0,0],"id":90181428314116,"type":105}
@nix {"action":"result","fields":[0,2,0,0],"id":90181428314115,"type":105}
@nix {"action":"result","fields":[0,2,1,0],"id":90181428314115,"type":105}
@nix {"action":"result","fields":["configure: error: no cc"],"id":7,"type":101}
@nix {"action":"result","fields":[1,2,0,1],"id":90181428314115,"type":105}
@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m builder for '/nix/store/x-a.drv' failed with exit code 1"}
/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-b
"#;

    #[test]
    fn progress_tail_and_stdout() {
        let mut log = BuildLog::new(3);
        let mut seen = Vec::new();
        let mut stdout = Vec::new();
        for l in LOG.lines() {
            match log.feed(l) {
                Ok(Some(Logged::Progress(c))) => {
                    seen.push((c.done, c.expected, c.running, c.failed))
                }
                Ok(other) => assert_eq!(other, None),
                Err(s) => stdout.push(s),
            }
        }
        assert_eq!(
            seen,
            [(0, 1, 0, 0), (0, 2, 0, 0), (0, 2, 1, 0), (1, 2, 0, 1)],
            "only the builds activity, only changes"
        );
        assert_eq!(stdout, ["/nix/store/0c0x3vy7y7rqn4kqdc6bkz1hb4a4f9a2-b"]);
        assert_eq!(
            log.text(),
            "these 2 derivations will be built:\nconfigure: error: no cc\n\
             error: builder for '/nix/store/x-a.drv' failed with exit code 1\n"
        );
        assert_eq!(log.counts().failed, 1);
    }

    #[test]
    fn garbage_is_kept_not_fatal() {
        let mut log = BuildLog::new(5);
        assert_eq!(log.feed("@nix {not json"), Ok(None));
        assert_eq!(log.text(), "{not json\n");
    }
}

#[cfg(test)]
mod remote_and_copy {
    use super::*;

    // Nix 2.26, `nix-build --option builders 'ssh://root@127.240.0.4 ...'
    // --option max-jobs 0` (2.8 prints the same without "parent").
    const REMOTE: &str = r#"@nix {"action":"start","id":34239479283714,"level":0,"parent":0,"text":"","type":104}
@nix {"action":"start","fields":["/nix/store/h7052bldbmp5zfx8fk5xr3mj72jm1y3q-hello-2.12.9.drv","ssh://root@127.240.0.4",1,1],"id":34239479283718,"level":3,"parent":0,"text":"building '/nix/store/h7052bldbmp5zfx8fk5xr3mj72jm1y3q-hello-2.12.9.drv' on 'ssh://root@127.240.0.4'","type":105}
@nix {"action":"start","id":34239479283723,"level":3,"parent":34239479283713,"text":"copying 1 paths","type":103}
@nix {"action":"start","fields":["/nix/store/ldmwih4fjqnl21l8qg5615kkx9w9mj75-hello-2.12.9","ssh://root@127.240.0.4","local"],"id":34239479283724,"level":3,"parent":34239479283713,"text":"copying path '/nix/store/ldmwih4fjqnl21l8qg5615kkx9w9mj75-hello-2.12.9' from 'ssh://root@127.240.0.4'","type":100}
@nix {"action":"stop","id":34239479283724}
@nix {"action":"start","fields":["/nix/store/x-local.drv","",1,1],"id":9,"level":3,"text":"building '/nix/store/x-local.drv'","type":105}"#;

    #[test]
    fn machines_and_copies() {
        let mut log = BuildLog::new(5);
        let told: Vec<Logged> = REMOTE
            .lines()
            .filter_map(|l| log.feed(l).expect("all log"))
            .collect();
        assert_eq!(
            told,
            [
                Logged::Building {
                    drv: "/nix/store/h7052bldbmp5zfx8fk5xr3mj72jm1y3q-hello-2.12.9.drv".into(),
                    machine: Some("ssh://root@127.240.0.4".into()),
                },
                Logged::CopyPlanned { paths: 1 },
                Logged::Copied {
                    path: "/nix/store/ldmwih4fjqnl21l8qg5615kkx9w9mj75-hello-2.12.9".into()
                },
                Logged::Building {
                    drv: "/nix/store/x-local.drv".into(),
                    machine: None,
                },
            ]
        );
    }
}

#[cfg(test)]
mod out_of_space_words {
    use super::*;

    /// The text of a plain log (what [`BuildLog::text`] keeps).
    fn said(log: &str) -> Option<String> {
        out_of_space(log)
    }

    #[test]
    fn nix_2_8_dies_writing_a_build_log() {
        // The test fleet's builder (Nix 2.8, a full 48 MiB /nix): a filler
        // derivation's `head` hit ENOSPC, then Nix itself could not write
        // and stopped, --keep-going or not.
        let log = "these 3 derivations will be built:\n\
                   head: error writing 'standard output': No space left on device\n\
                   error: writing to file: No space left on device\n\
                   (use '--show-trace' to show detailed location information)\n";
        assert_eq!(
            said(log).as_deref(),
            Some("writing to file: No space left on device")
        );
    }

    #[test]
    fn nix_2_26_colours_the_words() {
        // The test fleet's builder on Debian 13 (Nix 2.26.3, a full 48 MiB
        // /nix), as `--log-format internal-json` lines: the same words as
        // 2.8, the errno's in colour.
        let lines = [
            r#"@nix {"action":"result","fields":["head: error writing 'standard output': No space left on device"],"id":30648886624280,"type":101}"#,
            r#"@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m writing to file: \u001b[35;1mNo space left on device\u001b[0m","raw_msg":"writing to file: \u001b[35;1mNo space left on device\u001b[0m"}"#,
        ];
        let mut log = BuildLog::new(40);
        for l in lines {
            assert_eq!(log.feed(l), Ok(None));
        }
        assert_eq!(
            said(&log.text()).as_deref(),
            Some("writing to file: No space left on device")
        );
    }

    #[test]
    fn nix_2_26_quotes_the_builder_and_adds_its_note() {
        // A builder that failed on a nearly full store, Nix's words when
        // its logger is not verbose (derivation-goal.cc, 2.26.3): its last
        // lines quoted (`> `), then the note (2.8.1 says "For full logs,
        // run 'nix log ...'." on one line; the rest is the same).
        let log = "error: builder for '/nix/store/x-filler-3-1.0.drv' failed with exit code 1;\n\
                   last 1 log lines:\n\
                   > head: error writing 'standard output': No space left on device\n\
                   For full logs, run:\n\
                   \x20 nix log /nix/store/x-filler-3-1.0.drv\n\
                   note: build failure may have been caused by lack of free disk space\n";
        assert_eq!(
            said(log).as_deref(),
            Some("head: error writing 'standard output': No space left on device")
        );
        // Without the builder's own words, Nix's note says it.
        let note_only = "error: builder for '/nix/store/x.drv' failed with exit code 1\n\
                         note: build failure may have been caused by lack of free disk space\n";
        assert_eq!(
            said(note_only).as_deref(),
            Some("build failure may have been caused by lack of free disk space")
        );
    }

    #[test]
    fn the_database_and_quotas() {
        let sqlite = "error: executing SQLite statement 'insert into ValidPaths ...': \
                      database or disk is full (in '/nix/var/nix/db/db.sqlite')\n";
        assert!(said(sqlite).unwrap().contains("database or disk is full"));
        let quota = "error: writing to file: Disk quota exceeded\n";
        assert_eq!(
            said(quota).as_deref(),
            Some("writing to file: Disk quota exceeded")
        );
    }

    #[test]
    fn a_database_io_error_is_told_apart() {
        let log = "error: executing SQLite statement 'pragma synchronous = normal': \
                   disk I/O error (in '/nix/var/nix/db/db.sqlite')\n";
        assert_eq!(
            said(log),
            None,
            "not by itself: a failing disk says the same"
        );
        assert_eq!(
            database_io_error(log).as_deref(),
            Some(
                "executing SQLite statement 'pragma synchronous = normal': \
                 disk I/O error (in '/nix/var/nix/db/db.sqlite')"
            )
        );
        assert_eq!(
            database_io_error("error: writing to file: No space left on device\n"),
            None
        );
    }

    #[test]
    fn other_failures_are_not_a_full_disk() {
        for log in [
            "error: builder for '/nix/store/x.drv' failed with exit code 1\n",
            "error: attribute 'nixosConfigurations' missing\n",
            "configure: error: no space in the struct for this field\n",
            "",
        ] {
            assert_eq!(said(log), None, "{log}");
        }
    }
}
