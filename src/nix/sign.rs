//! Signing built closures on the builder, so hosts that require signatures
//! accept only what the builder signed; and giving a host the builder's
//! signatures for paths it already had ([`restore`]).
//!
//! A relay carries the signatures of the paths it sends (see
//! [`super::fanout`]), but a path a host already has is not sent again, and
//! Nix keeps the signatures it was registered with: none, if it came from
//! an unsigned copy (every relay before signatures were carried, the test
//! fleet's generation 0, a local build). A host that starts requiring
//! signatures then refuses every closure that reuses such a path. The
//! serve protocol cannot add signatures to a valid path, so [`restore`]
//! asks the host which of the closure's paths lack a trusted signature
//! (`nix store verify --no-contents --sigs-needed 1`), reads the builder's
//! signatures for those (`QueryPathInfos`), and has the host's Nix take
//! them with `nix store copy-sigs` from a throwaway `file://` cache holding
//! one `.narinfo` per path. `copy-sigs` takes a signature only for the same
//! NAR hash, size and references, and the host's own check still decides
//! what it trusts. The same commands and messages in Nix 2.8 and 2.26.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::StorePath;
use super::closure::PathInfo;
use super::serve;
use crate::remote::{Command, Remote};

/// `nix store sign --recursive` of the toplevels: output paths, which Nix
/// 2.8 and 2.26 both sign as given (a `.drv` installable differs: 2.8
/// builds it, 2.26 signs the derivation file itself).
pub fn sign_command(key_file: &str, toplevels: &[StorePath]) -> Command {
    Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--key-file",
            key_file,
            "--recursive",
        ])
        .args(toplevels.iter().map(StorePath::as_str))
}

/// Toplevels signed per command: far below the 128 KiB Linux allows the
/// one argument `sh -c` gets.
const SIGNED_PER_COMMAND: usize = 100;

/// Sign the closures of `toplevels` on the builder, in one command per 100
/// (one per host, one after another, was a round trip per host: 1.2 s of
/// 20 hosts' plan at 50 ms for the GC roots alike, BENCHMARKS.md); a path
/// several closures share is signed once.
pub async fn sign<R: Remote>(
    builder: &R,
    key_file: &str,
    toplevels: &[StorePath],
) -> anyhow::Result<()> {
    for chunk in toplevels.chunks(SIGNED_PER_COMMAND) {
        let what = match chunk {
            [one] => one.name().to_owned(),
            _ => format!("{} systems", chunk.len()),
        };
        builder
            .exec(&sign_command(key_file, chunk))
            .await
            .context("signing on the builder")?
            .check(&format!("signing {what} with {key_file}"))?;
    }
    Ok(())
}

/// What [`restore`] did on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Paths the host had without a signature by a key it trusts.
    pub untrusted: usize,
    /// Of those, paths the builder had signatures for, handed to the host.
    pub offered: usize,
}

/// Paths on stdin; one `path '...' is untrusted` line each on stderr.
const VERIFY: &str = "xargs nix --extra-experimental-features nix-command store verify --no-contents --sigs-needed 1";

/// Stdin: `@file NAME` lines, each followed by that file's lines; the file
/// `paths` lists the paths to take signatures for.
const COPY_SIGS: &str = r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
f=/dev/null
while IFS= read -r line; do
  case $line in
    "@file "*) f="$d/${line#@file }" ;;
    *) printf '%s\n' "$line" >>"$f" ;;
  esac
done
printf 'StoreDir: /nix/store\n' >"$d/nix-cache-info"
xargs nix --extra-experimental-features nix-command store copy-sigs --substituter "file://$d" <"$d/paths"
"#;

/// How long the host's `copy-sigs` may take (ended there by `timeout`):
/// it writes to the store's database, so it waits behind another writer (a
/// garbage collection) for as long as that holds it. It writes a few lines
/// per path; two minutes of it is a store that is stuck, not slow.
const COPY_SIGS_LIMIT: Duration = Duration::from_secs(120);
/// What the controller adds to that before it stops waiting (a host
/// without `timeout`, a connection that went quiet).
const COPY_SIGS_SLACK: Duration = Duration::from_secs(15);

/// Give `target` the builder's signatures for the paths of `present` (paths
/// it already has) that lack one by a key it trusts.
pub async fn restore<B: Remote, T: Remote>(
    builder: &B,
    target: &T,
    present: &[&PathInfo],
) -> anyhow::Result<Restored> {
    let untrusted = untrusted(target, present).await?;
    let mut done = Restored {
        untrusted: untrusted.len(),
        offered: 0,
    };
    if untrusted.is_empty() {
        return Ok(done);
    }
    let paths: Vec<&StorePath> = untrusted.iter().map(|p| &p.path).collect();
    let mut sigs = builder_signatures(builder, &paths).await?;
    let mut input = String::new();
    let mut list = String::from("@file paths\n");
    for p in &untrusted {
        let Some(trust) = sigs.remove(p.path.as_str()).filter(|t| !t.sigs.is_empty()) else {
            continue;
        };
        input.push_str(&format!("@file {}.narinfo\n", p.path.hash()));
        input.push_str(&narinfo(p, &trust)?);
        list.push_str(p.path.as_str());
        list.push('\n');
        done.offered += 1;
    }
    if done.offered == 0 {
        return Ok(done);
    }
    input.push_str(&list);
    copy_sigs(target, input.as_bytes()).await?;
    Ok(done)
}

/// Run [`COPY_SIGS`] on `target` with `input` (the narinfos, then the
/// paths), bounded by [`COPY_SIGS_LIMIT`] there and here.
async fn copy_sigs<T: Remote>(target: &T, input: &[u8]) -> anyhow::Result<()> {
    let copy = Command::script(COPY_SIGS).within(COPY_SIGS_LIMIT);
    let copied = target.exec_small_input(&copy, input);
    let too_long = || {
        anyhow::anyhow!(
            "copying signatures to {} took over {} s: its store database is held by \
             another Nix process (a garbage collection?); `ps -ef | grep nix` there tells",
            target.name(),
            COPY_SIGS_LIMIT.as_secs()
        )
    };
    let out = tokio::time::timeout(COPY_SIGS_LIMIT + COPY_SIGS_SLACK, copied)
        .await
        .map_err(|_| too_long())?
        .with_context(|| format!("copying signatures to {}", target.name()))?;
    // `timeout` ended it there.
    if out.exit.code() == Some(124) {
        return Err(too_long());
    }
    out.check(&format!(
        "nix store copy-sigs of the builder's signatures on {}",
        target.name()
    ))?;
    Ok(())
}

/// The paths of `present` that `target` holds without a trusted signature.
async fn untrusted<'a, T: Remote>(
    target: &T,
    present: &[&'a PathInfo],
) -> anyhow::Result<Vec<&'a PathInfo>> {
    if present.is_empty() {
        return Ok(Vec::new());
    }
    let mut input = String::with_capacity(present.len() * 80);
    for p in present {
        input.push_str(p.path.as_str());
        input.push('\n');
    }
    let out = target
        .exec_small_input(&Command::script(VERIFY), input.as_bytes())
        .await
        .with_context(|| format!("checking signatures on {}", target.name()))?;
    let err = out.stderr_str();
    let named: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("path '")?.strip_suffix("' is untrusted"))
        .collect();
    // xargs turns the command's bit mask (2: untrusted) into 123.
    anyhow::ensure!(
        out.success() || !named.is_empty(),
        "nix store verify on {} failed: {}",
        target.name(),
        out.tail(3).join(" / ")
    );
    Ok(present
        .iter()
        .filter(|p| named.contains(&p.path.as_str()))
        .copied()
        .collect())
}

/// The builder's signatures and content addresses of `paths`, by path
/// (one `nix-store --serve` session, one `QueryPathInfos`).
async fn builder_signatures<B: Remote>(
    builder: &B,
    paths: &[&StorePath],
) -> anyhow::Result<HashMap<String, serve::Trust>> {
    let mut req = serve::greeting();
    serve::query_path_infos(&mut req, paths);
    let src = builder
        .exec_stream(&Command::new("nix-store").arg("--serve"))
        .await
        .context("starting nix-store --serve on the builder")?;
    let mut stdin = src.stdin;
    let writer = async move {
        stdin.write_all(&req).await?;
        stdin.shutdown().await
    };
    let mut stdout = src.stdout;
    let mut answer = Vec::new();
    let (written, read) = tokio::join!(writer, stdout.read_to_end(&mut answer));
    drop(stdout);
    let exit = src.finish.await?;
    read.context("reading nix-store --serve on the builder")?;
    written.context("asking nix-store --serve on the builder")?;
    exit.check("nix-store --serve on the builder (signatures)")?;
    let mut r = serve::Bytes(&answer);
    let version = {
        use serve::WireRead;
        let magic = r.word().await?;
        let version = r.word().await?;
        serve::check_greeting(magic, version, "the builder")?
    };
    Ok(serve::read_path_infos(&mut r, version)
        .await?
        .into_iter()
        .collect())
}

/// A `.narinfo` for `copy-sigs` from a `file://` cache: what it compares
/// (NAR hash, size, references) from the builder's database, the builder's
/// signatures; the NAR itself is never fetched.
pub fn narinfo(p: &PathInfo, trust: &serve::Trust) -> anyhow::Result<String> {
    let hash = p
        .nar_hash
        .with_context(|| format!("the builder's database gives no NAR hash for {}", p.path))?;
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let refs: Vec<&str> = p.references.iter().map(|r| r.base_name()).collect();
    let mut out = format!(
        "StorePath: {}\nURL: nar/{}.nar\nCompression: none\nNarHash: sha256:{hex}\nNarSize: {}\nReferences: {}\n",
        p.path,
        p.path.hash(),
        p.nar_size,
        refs.join(" ")
    );
    if let Some(d) = &p.deriver {
        out.push_str(&format!("Deriver: {}\n", d.base_name()));
    }
    for s in &trust.sigs {
        out.push_str(&format!("Sig: {s}\n"));
    }
    if !trust.ca.is_empty() {
        out.push_str(&format!("CA: {}\n", trust.ca));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::closure::PathRecord;

    fn sp(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    /// A host whose store database another Nix process holds: its
    /// `copy-sigs` is ended there by `timeout`, and nixgate stops waiting
    /// soon after even where the host has no `timeout`.
    #[tokio::test(start_paused = true)]
    async fn copying_signatures_waits_two_minutes_at_most() {
        /// Records the command; answers with `.1`, or never.
        struct Held(std::sync::Mutex<Vec<String>>, Option<crate::remote::Output>);
        impl Remote for Held {
            fn name(&self) -> &str {
                "light1"
            }
            async fn exec(&self, cmd: &Command) -> anyhow::Result<crate::remote::Output> {
                unreachable!("{cmd}: copy-sigs takes input")
            }
            async fn exec_stream(&self, cmd: &Command) -> anyhow::Result<crate::remote::Streaming> {
                unreachable!("{cmd}: copy-sigs input is small")
            }
            async fn exec_small_input(
                &self,
                cmd: &Command,
                _: &[u8],
            ) -> anyhow::Result<crate::remote::Output> {
                self.0.lock().unwrap().push(cmd.render());
                match &self.1 {
                    Some(out) => Ok(out.clone()),
                    None => std::future::pending().await,
                }
            }
        }
        let held = Held(Default::default(), None);
        let started = tokio::time::Instant::now();
        let e = copy_sigs(&held, b"@file paths\n/nix/store/x\n")
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), COPY_SIGS_LIMIT + COPY_SIGS_SLACK);
        assert!(
            format!("{e:#}").contains("copying signatures to light1 took over 120 s"),
            "{e:#}"
        );
        let sent = held.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert!(
            sent[0].contains("exec timeout -k 5") && sent[0].contains(" 120 "),
            "{sent:?}"
        );
        // Ended there by `timeout` (124): said the same way.
        let exit = crate::remote::Exit::Code { code: 124 };
        let ended = Held(
            Default::default(),
            Some(crate::remote::Output::new(exit, "", "")),
        );
        let e = copy_sigs(&ended, b"@file paths\n").await.unwrap_err();
        assert!(format!("{e:#}").contains("took over 120 s"), "{e:#}");
    }

    #[tokio::test]
    async fn signs_many_closures_in_one_command_per_hundred() {
        let r = crate::remote::scripted::ScriptedRemote::new("builder", |_| {
            crate::remote::scripted::ok("")
        });
        let tops: Vec<StorePath> = (0..250)
            .map(|i| sp(&format!("/nix/store/{i:0>32}-nixos-system-h{i}")))
            .collect();
        sign(&r, "/etc/nix/key", &tops).await.unwrap();
        let argvs = r.argvs();
        let flags = [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--key-file",
            "/etc/nix/key",
            "--recursive",
        ];
        assert_eq!(argvs.len(), 3);
        for (argv, chunk) in argvs.iter().zip(tops.chunks(100)) {
            assert_eq!(argv[..flags.len()], flags);
            let paths: Vec<&str> = chunk.iter().map(StorePath::as_str).collect();
            assert_eq!(argv[flags.len()..], paths);
        }
    }

    #[test]
    fn narinfo_has_what_copy_sigs_compares_and_the_signatures() {
        let p = PathInfo::from(PathRecord {
            path: sp("/nix/store/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-hello-2.12.2"),
            nar_size: 65984,
            nar_hash: Some([0xab; 32]),
            references: vec![
                sp("/nix/store/07yxrasyi0r0k2sy9086b99yj41vw4x1-glibc-2.39-5"),
                sp("/nix/store/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-hello-2.12.2"),
            ],
            deriver: Some(sp(
                "/nix/store/x3k1iy1gqf0c1ik1qdpkqpmx8yxcng5n-hello-2.12.2.drv",
            )),
        });
        let trust = serve::Trust {
            sigs: vec!["builder-1:AAAA".into(), "other-1:BBBB".into()],
            ca: String::new(),
        };
        let text = narinfo(&p, &trust).unwrap();
        assert_eq!(
            text,
            format!(
                "StorePath: {}\nURL: nar/05d8ydqjy1d7zdkb5qrllv22k6m2f9dn.nar\nCompression: none\n\
                 NarHash: sha256:{}\nNarSize: 65984\n\
                 References: 07yxrasyi0r0k2sy9086b99yj41vw4x1-glibc-2.39-5 05d8ydqjy1d7zdkb5qrllv22k6m2f9dn-hello-2.12.2\n\
                 Deriver: x3k1iy1gqf0c1ik1qdpkqpmx8yxcng5n-hello-2.12.2.drv\n\
                 Sig: builder-1:AAAA\nSig: other-1:BBBB\n",
                p.path,
                "ab".repeat(32)
            )
        );
        // Every line is `Name: value` (Nix's parser needs the space).
        assert!(text.lines().all(|l| l.contains(": ")));
        let ca = serve::Trust {
            sigs: Vec::new(),
            ca: "fixed:r:sha256:0mz3".into(),
        };
        let bare = PathInfo::from(PathRecord {
            references: Vec::new(),
            deriver: None,
            ..(*p).clone()
        });
        let text = narinfo(&bare, &ca).unwrap();
        assert!(text.contains("References: \n") && text.ends_with("CA: fixed:r:sha256:0mz3\n"));
        assert!(
            narinfo(
                &PathInfo::from(PathRecord {
                    nar_hash: None,
                    ..(*p).clone()
                }),
                &trust
            )
            .is_err()
        );
    }
}
