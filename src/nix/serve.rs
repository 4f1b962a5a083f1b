//! The legacy serve protocol (`nix-store --serve`), as far as nixgate speaks
//! it: the greeting, `QueryValidPaths` (which paths a host has, asked in
//! the session that then adds what it lacks), `QueryPathInfos` (the
//! builder's signatures and content address of one path), `DumpStorePath`
//! (the builder sends one path's NAR) and `AddToStoreNar` (a host adds one path with its signatures, checking
//! the NAR's size and SHA-256 against what it is told, as `nix-copy-closure`
//! has it do). Every Nix since 2.3 and every Lix speaks protocol 2.5; the
//! commands are older.
//!
//! Signatures, by version (read in Nix's `nix-store.cc` `opServe` and, from
//! 2.19 on, `serve-protocol.cc`):
//! - `QueryPathInfos` answers, per path: the path, deriver, references,
//!   download size, NAR size and, only when the client's minor version is
//!   4 or more, the NAR hash, content address and signatures. Nix 2.8 (up
//!   to 2.19) tests the *client's* announced version; Nix 2.20+ (2.26 in
//!   the trixie fleet) the lower of both. nixgate announces 2.5 and refuses
//!   servers below 2.5, so the three fields always come, from every Nix
//!   nixgate talks to. Nix 2.8 renders the hash as `sha256:<base32>` like
//!   2.26 does (nixgate does not use it: the closure query has it already).
//! - `AddToStoreNar` has carried signatures and content address since it
//!   exists (protocol 2.5, Nix 2.3): the host stores them as they are.
//!   Neither 2.8 nor 2.26 checks them there: `nix-store --serve --write`
//!   adds with `NoCheckSigs` whatever `require-sigs` says (through a
//!   daemon, a trusted user such as root is not checked either). So a
//!   host's trust is checked afterwards, by the activation's realise step
//!   (`nix store verify --sigs-needed 1`, with `require_signatures`).
//! - A content address from a newer Nix that an older one cannot parse
//!   (git hashing, experimental since 2.21) fails that path's import on
//!   the older host, as `nix-copy-closure` would.
//!
//! Words are little-endian `u64`s; strings are a length, the bytes and zero
//! padding to 8 ([`super::nar::wire_string`]).

use anyhow::Context;

use super::StorePath;
use super::closure::PathInfo;
use super::nar::wire_string;

pub const MAGIC_CLIENT: u64 = 0x390c_9deb;
pub const MAGIC_SERVER: u64 = 0x5452_eecb;
/// The version nixgate announces: 2.5.
pub const VERSION: u64 = 0x205;
const CMD_QUERY_VALID_PATHS: u64 = 1;
const CMD_QUERY_PATH_INFOS: u64 = 2;
const CMD_DUMP_STORE_PATH: u64 = 3;
const CMD_ADD_TO_STORE_NAR: u64 = 9;

fn word(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// What a client sends first.
pub fn greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    word(&mut out, MAGIC_CLIENT);
    word(&mut out, VERSION);
    out
}

/// Check a server's greeting (its magic word, then its version); returns
/// the version.
pub fn check_greeting(magic: u64, version: u64, who: &str) -> anyhow::Result<u64> {
    anyhow::ensure!(
        magic == MAGIC_SERVER,
        "nix-store --serve on {who} answered {magic:#x}: not the serve protocol \
         (does a login script print to stdout?)"
    );
    anyhow::ensure!(
        version >> 8 == 2 && version & 0xff >= 5,
        "nix-store --serve on {who} speaks protocol {}.{}; nixgate needs 2.5 or later (Nix 2.3+, Lix)",
        version >> 8,
        version & 0xff
    );
    Ok(version)
}

/// Ask for the NAR of `path`.
pub fn dump_store_path(out: &mut Vec<u8>, path: &PathInfo) {
    word(out, CMD_DUMP_STORE_PATH);
    out.extend_from_slice(&wire_string(path.path.as_str().as_bytes()));
}

/// Ask which of `paths` are valid, neither locking them (temporary GC
/// roots) nor substituting: as `nix-copy-closure` asks. Every Nix since
/// the serve protocol's 2.0 reads `lock`, `substitute`, then the set.
pub fn query_valid_paths(out: &mut Vec<u8>, paths: &[&StorePath]) {
    word(out, CMD_QUERY_VALID_PATHS);
    word(out, 0);
    word(out, 0);
    path_set(out, paths);
}

/// A set of store paths on the wire: the count, then each path.
fn path_set(out: &mut Vec<u8>, paths: &[&StorePath]) {
    word(out, paths.len() as u64);
    for p in paths {
        out.extend_from_slice(&wire_string(p.as_str().as_bytes()));
    }
}

/// Read the answer to [`query_valid_paths`] for `asked` paths from `who`:
/// the valid ones, a set (a count, then each path). More than were asked,
/// or a string that is no store path, is not the serve protocol.
pub(crate) async fn read_valid_paths<R: WireRead>(
    r: &mut R,
    asked: usize,
    who: &str,
) -> anyhow::Result<Vec<StorePath>> {
    let n = r.word().await?;
    anyhow::ensure!(
        n <= asked as u64,
        "nix-store --serve on {who} named {n} valid paths when asked about {asked}: \
         not the serve protocol"
    );
    let mut valid = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let text = read_string_of(r, who, "valid path").await?;
        valid.push(StorePath::parse(&text).with_context(|| {
            format!("nix-store --serve on {who} answered {text:?} for a valid path")
        })?);
    }
    Ok(valid)
}

/// Ask for one path's registration (for its signatures and content
/// address): a set of one path.
pub fn query_path_info(out: &mut Vec<u8>, path: &PathInfo) {
    word(out, CMD_QUERY_PATH_INFOS);
    path_set(out, &[&path.path]);
}

/// What the builder vouches for a path with, beyond its NAR hash: carried
/// to the host unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// `<key name>:<base64 ed25519 signature>`, as the builder stores them.
    pub sigs: Vec<String>,
    /// The content address (`fixed:r:sha256:...`, `text:sha256:...`), or
    /// empty: input-addressed.
    pub ca: String,
}

/// The longest string nixgate accepts in an answer: a store path is at
/// most 211 bytes past `/nix/store/`, a signature about 100, a content
/// address about 80; a longer one means the stream is not what it seems.
const MAX_STRING: u64 = 4096;
/// The most signatures one path may carry in an answer.
const MAX_SIGS: u64 = 1024;

/// A source of serve-protocol words and strings.
pub(crate) trait WireRead {
    async fn word(&mut self) -> anyhow::Result<u64>;
    /// `n` bytes and their padding to 8; the bytes.
    async fn bytes(&mut self, n: usize) -> anyhow::Result<Vec<u8>>;
}

async fn read_string<R: WireRead>(r: &mut R, what: &str) -> anyhow::Result<String> {
    read_string_of(r, "the builder", what).await
}

/// A string of `whose` answer (the builder's, a host's), at most
/// [`MAX_STRING`] bytes of UTF-8.
async fn read_string_of<R: WireRead>(r: &mut R, whose: &str, what: &str) -> anyhow::Result<String> {
    let len = r.word().await?;
    anyhow::ensure!(
        len <= MAX_STRING,
        "{whose}'s answer has a {len}-byte {what}: not the serve protocol"
    );
    let b = r.bytes(len as usize).await?;
    String::from_utf8(b).map_err(|_| anyhow::anyhow!("{whose}'s {what} is not UTF-8"))
}

/// Read the answer to [`query_path_info`] for `path` from a server whose
/// greeting gave `version`: its signatures and content address. A path
/// the builder does not have gets an empty answer: an error naming it.
pub(crate) async fn read_path_info<R: WireRead>(
    r: &mut R,
    path: &PathInfo,
    version: u64,
) -> anyhow::Result<Trust> {
    let first = read_string(r, "path").await?;
    anyhow::ensure!(
        !first.is_empty(),
        "the builder does not have {} (not valid in its store: collected, or never built there?)",
        path.path
    );
    anyhow::ensure!(
        first == path.path.as_str(),
        "the builder answered {first:?} when asked for {}",
        path.path
    );
    let trust = read_entry(r, &first, version).await?;
    let end = read_string(r, "path").await?;
    anyhow::ensure!(
        end.is_empty(),
        "the builder answered for {end:?} too when asked for {} alone",
        path.path
    );
    Ok(trust)
}

/// Ask for the registrations of `paths` (a set: answered in the server's
/// order, paths it lacks left out).
pub fn query_path_infos(out: &mut Vec<u8>, paths: &[&StorePath]) {
    word(out, CMD_QUERY_PATH_INFOS);
    path_set(out, paths);
}

/// Read the answer to [`query_path_infos`]: each path the server has, with
/// its signatures and content address.
pub(crate) async fn read_path_infos<R: WireRead>(
    r: &mut R,
    version: u64,
) -> anyhow::Result<Vec<(String, Trust)>> {
    let mut out = Vec::new();
    loop {
        let path = read_string(r, "path").await?;
        if path.is_empty() {
            return Ok(out);
        }
        let trust = read_entry(r, &path, version).await?;
        out.push((path, trust));
    }
}

/// One answer after its path: deriver, references, sizes and, from 2.4,
/// NAR hash, content address and signatures.
async fn read_entry<R: WireRead>(r: &mut R, path: &str, version: u64) -> anyhow::Result<Trust> {
    read_string(r, "deriver").await?;
    let refs = r.word().await?;
    for _ in 0..refs {
        read_string(r, "reference").await?;
    }
    r.word().await?; // download size
    r.word().await?; // NAR size
    let mut trust = Trust::default();
    // Both sides' lower version decides (Nix 2.8 to 2.19 go by the client's
    // alone, which is nixgate's 2.5: the same here).
    if VERSION.min(version) & 0xff >= 4 {
        read_string(r, "NAR hash").await?;
        trust.ca = read_string(r, "content address").await?;
        let n = r.word().await?;
        anyhow::ensure!(
            n <= MAX_SIGS,
            "the builder's answer gives {path} {n} signatures: not the serve protocol"
        );
        for _ in 0..n {
            trust.sigs.push(read_string(r, "signature").await?);
        }
    }
    Ok(trust)
}

/// A stream read word by word (a host's answers, which are small).
pub(crate) struct Stream<'a, R>(pub &'a mut R);

impl<R: tokio::io::AsyncRead + Unpin + Send> WireRead for Stream<'_, R> {
    async fn word(&mut self) -> anyhow::Result<u64> {
        use tokio::io::AsyncReadExt;
        let mut w = [0u8; 8];
        self.0.read_exact(&mut w).await?;
        Ok(u64::from_le_bytes(w))
    }

    async fn bytes(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut out = vec![0u8; n.div_ceil(8) * 8];
        self.0.read_exact(&mut out).await?;
        out.truncate(n);
        Ok(out)
    }
}

/// A whole answer already read into memory, read as the stream.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl WireRead for Bytes<'_> {
    async fn word(&mut self) -> anyhow::Result<u64> {
        let b = self.bytes(8).await?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b);
        Ok(u64::from_le_bytes(w))
    }

    async fn bytes(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let padded = n.div_ceil(8) * 8;
        anyhow::ensure!(self.0.len() >= padded, "the builder's answer ended early");
        let out = self.0[..n].to_vec();
        self.0 = &self.0[padded..];
        Ok(out)
    }
}

/// What precedes a path's NAR when adding it to a host's store: its
/// registration (the host checks the NAR against `nar_size` and
/// `nar_hash`) with the builder's signatures and content address.
pub fn add_to_store_nar(p: &PathInfo, trust: &Trust) -> anyhow::Result<Vec<u8>> {
    let hash = p.nar_hash.ok_or_else(|| {
        anyhow::anyhow!(
            "the builder's database gives no SHA-256 NAR hash for {}",
            p.path
        )
    })?;
    anyhow::ensure!(
        p.nar_size > 0,
        "the builder's database gives no NAR size for {} (registered by a very old Nix?)",
        p.path
    );
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let sigs: usize = trust.sigs.iter().map(|s| s.len() + 16).sum();
    let mut out = Vec::with_capacity(256 + 64 * p.references.len() + sigs);
    word(&mut out, CMD_ADD_TO_STORE_NAR);
    out.extend_from_slice(&wire_string(p.path.as_str().as_bytes()));
    let deriver = p.deriver.as_ref().map_or("", |d| d.as_str());
    out.extend_from_slice(&wire_string(deriver.as_bytes()));
    out.extend_from_slice(&wire_string(format!("sha256:{hex}").as_bytes()));
    word(&mut out, p.references.len() as u64);
    for r in &p.references {
        out.extend_from_slice(&wire_string(r.as_str().as_bytes()));
    }
    word(&mut out, 0); // registration time: now
    word(&mut out, p.nar_size);
    word(&mut out, 0); // not ultimately trusted
    word(&mut out, trust.sigs.len() as u64);
    for s in &trust.sigs {
        out.extend_from_slice(&wire_string(s.as_bytes()));
    }
    out.extend_from_slice(&wire_string(trust.ca.as_bytes()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::StorePath;
    use crate::nix::closure::PathRecord;

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    fn filler() -> PathInfo {
        PathInfo::from(PathRecord {
            path: sp("/nix/store/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-filler-299-1.0"),
            nar_size: 65984,
            nar_hash: Some([0xab; 32]),
            references: vec![sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-dep")],
            deriver: None,
        })
    }

    const SIG: &str = "builder-1:gZnC0dCjnVMTbHkPxOWtaNmd/1IRPnnXxc5Dxkqr1hr5YXLsOyPqQaZmY8vlvIRJvZQ1Eb/NqRD7H9FyTNnwCQ==";

    #[test]
    fn add_to_store_nar_fields_in_order() {
        let p = filler();
        let b = add_to_store_nar(&p, &Trust::default()).unwrap();
        let word_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(word_at(0), 9);
        let path = p.path.as_str().as_bytes();
        assert_eq!(word_at(8), path.len() as u64);
        assert_eq!(&b[16..16 + path.len()], path);
        let mut at = 16 + path.len().div_ceil(8) * 8;
        assert_eq!(word_at(at), 0, "empty deriver");
        at += 8;
        assert_eq!(word_at(at), 71, "sha256: and 64 hex digits");
        assert_eq!(&b[at + 8..at + 8 + 9], b"sha256:ab");
        at += 8 + 72;
        assert_eq!(word_at(at), 1, "one reference");
        // The tail: registration time, size, ultimate, no sigs, empty ca.
        let n = b.len();
        assert_eq!(u64::from_le_bytes(b[n - 40..n - 32].try_into().unwrap()), 0);
        assert_eq!(
            u64::from_le_bytes(b[n - 32..n - 24].try_into().unwrap()),
            65984
        );
        assert_eq!(&b[n - 24..], &[0u8; 24]);

        let unhashed = PathInfo::from(PathRecord {
            nar_hash: None,
            ..(*p).clone()
        });
        assert!(add_to_store_nar(&unhashed, &Trust::default()).is_err());
        let sizeless = PathInfo::from(PathRecord {
            nar_size: 0,
            ..(*p).clone()
        });
        assert!(add_to_store_nar(&sizeless, &Trust::default()).is_err());
    }

    #[test]
    fn add_to_store_nar_carries_signatures_and_content_address() {
        let p = filler();
        let trust = Trust {
            sigs: vec![SIG.into(), "other-1:c2ln".into()],
            ca: "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
        };
        let unsigned = add_to_store_nar(&p, &Trust::default()).unwrap();
        let b = add_to_store_nar(&p, &trust).unwrap();
        // Up to the signature count, as without; then the list and the ca.
        let head = unsigned.len() - 16;
        assert_eq!(&b[..head], &unsigned[..head]);
        let mut tail = Vec::new();
        word(&mut tail, 2);
        tail.extend_from_slice(&wire_string(SIG.as_bytes()));
        tail.extend_from_slice(&wire_string(b"other-1:c2ln"));
        tail.extend_from_slice(&wire_string(trust.ca.as_bytes()));
        assert_eq!(&b[head..], &tail[..]);
    }

    /// An answer to QueryPathInfos as Nix 2.8 and 2.26 write it for a
    /// client at 2.4 or later.
    fn answer(p: &PathInfo, ca: &str, sigs: &[&str]) -> Vec<u8> {
        let mut out = wire_string(p.path.as_str().as_bytes());
        out.extend_from_slice(&wire_string(
            b"/nix/store/x3k1iy1gqf0c1ik1qdpkqpmx8yxcng5n-filler.drv",
        ));
        word(&mut out, p.references.len() as u64);
        for r in &p.references {
            out.extend_from_slice(&wire_string(r.as_str().as_bytes()));
        }
        word(&mut out, p.nar_size);
        word(&mut out, p.nar_size);
        out.extend_from_slice(&wire_string(
            b"sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ));
        out.extend_from_slice(&wire_string(ca.as_bytes()));
        word(&mut out, sigs.len() as u64);
        for s in sigs {
            out.extend_from_slice(&wire_string(s.as_bytes()));
        }
        out.extend_from_slice(&wire_string(b""));
        out
    }

    #[tokio::test]
    async fn reads_signatures_from_a_path_info_answer() {
        let p = filler();
        let a = answer(&p, "", &[SIG]);
        let mut r = Bytes(&a);
        let t = read_path_info(&mut r, &p, 0x207).await.unwrap();
        assert_eq!(t.sigs, [SIG]);
        assert_eq!(t.ca, "");
        assert!(r.0.is_empty(), "the whole answer was read");
        // Content-addressed, unsigned.
        let a = answer(&p, "text:sha256:0mhh", &[]);
        let t = read_path_info(&mut Bytes(&a), &p, 0x205).await.unwrap();
        assert_eq!((t.sigs.len(), t.ca.as_str()), (0, "text:sha256:0mhh"));
        // The request it answers: command 2, a set of one path.
        let mut req = Vec::new();
        query_path_info(&mut req, &p);
        assert_eq!(
            &req[..16],
            &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&req[16..], &wire_string(p.path.as_str().as_bytes())[..]);
    }

    #[tokio::test]
    async fn reads_several_answers_in_the_servers_order() {
        let a = filler();
        let b = PathInfo::from(PathRecord {
            path: sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-dep"),
            references: Vec::new(),
            ..(*filler()).clone()
        });
        let mut req = Vec::new();
        query_path_infos(&mut req, &[&a.path, &b.path]);
        assert_eq!(
            &req[..16],
            &[2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        // The server's order, each answer as for one path, one terminator.
        let mut stream = answer(&b, "", &[]);
        stream.truncate(stream.len() - 8);
        stream.extend_from_slice(&answer(&a, "", &[SIG, "other-1:c2ln"]));
        let got = read_path_infos(&mut Bytes(&stream), 0x207).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b.path.as_str());
        assert!(got[0].1.sigs.is_empty());
        assert_eq!(got[1].0, a.path.as_str());
        assert_eq!(got[1].1.sigs, [SIG, "other-1:c2ln"]);
        // Nothing the server has: the terminator alone.
        let none = wire_string(b"");
        assert!(
            read_path_infos(&mut Bytes(&none), 0x207)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            read_path_infos(&mut Bytes(&stream[..40]), 0x207)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_missing_or_odd_answer_is_an_error() {
        let p = filler();
        // The builder lacks the path: the answer is the empty terminator only.
        let none = wire_string(b"");
        let e = read_path_info(&mut Bytes(&none), &p, 0x207)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not have") && e.contains("filler-299"),
            "{e}"
        );
        // Another path.
        let other = PathInfo::from(PathRecord {
            path: sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-dep"),
            ..(*filler()).clone()
        });
        let a = answer(&other, "", &[]);
        assert!(read_path_info(&mut Bytes(&a), &p, 0x207).await.is_err());
        // Cut short, or a string no answer has.
        let a = answer(&p, "", &[SIG]);
        assert!(
            read_path_info(&mut Bytes(&a[..a.len() - 8]), &p, 0x207)
                .await
                .is_err()
        );
        let mut huge = wire_string(p.path.as_str().as_bytes());
        word(&mut huge, 1 << 40);
        let e = read_path_info(&mut Bytes(&huge), &p, 0x207)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the serve protocol"), "{e}");
    }

    #[test]
    fn greeting_is_checked() {
        assert_eq!(check_greeting(MAGIC_SERVER, 0x207, "b").unwrap(), 0x207);
        assert!(check_greeting(0x1234, 0x207, "b").is_err());
        assert!(
            check_greeting(MAGIC_SERVER, 0x204, "b")
                .unwrap_err()
                .to_string()
                .contains("2.5")
        );
    }

    /// QueryValidPaths as Nix reads it (command, lock, substitute, the
    /// set), and its answer read back: the valid paths, with a host that
    /// names more paths than it was asked about, or something that is no
    /// store path, refused.
    #[tokio::test]
    async fn valid_paths_asked_and_read() {
        let a = sp("/nix/store/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-filler-299-1.0");
        let b = sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-dep");
        let mut req = Vec::new();
        query_valid_paths(&mut req, &[&a, &b]);
        let mut expected = Vec::new();
        for w in [1u64, 0, 0, 2] {
            expected.extend_from_slice(&w.to_le_bytes());
        }
        expected.extend_from_slice(&wire_string(a.as_str().as_bytes()));
        expected.extend_from_slice(&wire_string(b.as_str().as_bytes()));
        assert_eq!(req, expected);

        let answer = |paths: &[&str]| {
            let mut out = (paths.len() as u64).to_le_bytes().to_vec();
            for p in paths {
                out.extend_from_slice(&wire_string(p.as_bytes()));
            }
            out
        };
        let one = answer(&[b.as_str()]);
        let got = read_valid_paths(&mut Bytes(&one), 2, "h").await.unwrap();
        assert_eq!(got, vec![b.clone()]);
        let none = answer(&[]);
        assert!(
            read_valid_paths(&mut Bytes(&none), 2, "h")
                .await
                .unwrap()
                .is_empty()
        );
        let three = answer(&[a.as_str(), b.as_str(), a.as_str()]);
        let e = read_valid_paths(&mut Bytes(&three), 2, "h")
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("3 valid paths when asked about 2"),
            "{e}"
        );
        let odd = answer(&["/etc/passwd"]);
        let e = read_valid_paths(&mut Bytes(&odd), 2, "h")
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("/etc/passwd"), "{e:#}");
        let cut = &one[..20];
        assert!(read_valid_paths(&mut Bytes(cut), 2, "h").await.is_err());
    }
}
