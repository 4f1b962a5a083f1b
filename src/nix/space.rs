//! How full the file system holding a Nix store is, read with `df -Pk`
//! (POSIX output: Linux and macOS builders alike), for the words of a
//! build that ran out of space: which store, on which mount, how full.

use serde::{Deserialize, Serialize};

use crate::remote::{Command, Remote};

/// The store nixgate builds into (every store path it handles is under it).
pub const STORE_DIR: &str = "/nix/store";

/// Below this much free space Nix itself suspects a failed build ran out
/// of room ("build failure may have been caused by lack of free disk
/// space", Nix 2.8 through 2.26: a hard-coded 8 MiB in
/// `cleanupDecideWhetherDiskFull`), and its garbage collector's reserve
/// (`gc-reserved-space`) is 8 MiB by default too.
pub const NEARLY_FULL_BELOW: u64 = 8 << 20;

/// The file system holding a store, as `df -Pk` saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpace {
    /// The store's directory (`/nix/store`).
    pub dir: String,
    /// Where the file system holding it is mounted (`/nix`, `/`).
    pub mounted_on: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
}

impl StoreSpace {
    /// Less free space than Nix needs to finish a build and collect garbage.
    pub fn nearly_full(&self) -> bool {
        self.free_bytes < NEARLY_FULL_BELOW
    }
}

/// Parse `df -Pk DIR`'s output: a header, then one line `FILESYSTEM
/// 1024-BLOCKS USED AVAILABLE CAPACITY MOUNTED-ON` (a mount point may hold
/// spaces: everything after the fifth field).
pub fn parse_df(dir: &str, text: &str) -> Option<StoreSpace> {
    let line = text.lines().rfind(|l| !l.trim().is_empty())?;
    let mut fields = line.split_whitespace();
    let _filesystem = fields.next()?;
    let kib = |s: Option<&str>| s?.parse::<u64>().ok().map(|k| k * 1024);
    let size_bytes = kib(fields.next())?;
    let _used = fields.next()?;
    let free_bytes = kib(fields.next())?;
    let _capacity = fields.next()?;
    let mounted_on = fields.collect::<Vec<_>>().join(" ");
    if mounted_on.is_empty() {
        return None;
    }
    Some(StoreSpace {
        dir: dir.to_owned(),
        mounted_on,
        size_bytes,
        free_bytes,
    })
}

/// How full the builder's store is now; `None` when `df` cannot tell
/// (the words then say only what Nix said).
pub async fn store_space<R: Remote>(remote: &R) -> Option<StoreSpace> {
    let out = remote
        .exec(&Command::new("df").args(["-Pk", STORE_DIR]))
        .await
        .ok()?;
    if !out.success() {
        tracing::debug!("df -Pk {STORE_DIR}: {}", out.exit);
        return None;
    }
    parse_df(STORE_DIR, &out.stdout_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::scripted::{ScriptedRemote, ok};

    #[test]
    fn linux_and_macos_df() {
        // The test fleet's builder: a 48 MiB tmpfs on /nix, full.
        let s = parse_df(
            STORE_DIR,
            "Filesystem      1024-blocks  Used Available Capacity Mounted on\n\
             fleet-small-nix       49152 49152         0     100% /nix\n",
        )
        .unwrap();
        assert_eq!(s.mounted_on, "/nix");
        assert_eq!(s.size_bytes, 48 << 20);
        assert_eq!(s.free_bytes, 0);
        assert!(s.nearly_full());
        // macOS's `df -Pk` on an APFS volume, a mount point with a space.
        let s = parse_df(
            STORE_DIR,
            "Filesystem   1024-blocks      Used Available Capacity  Mounted on\n\
             /dev/disk3s7   971350180 105233400 600000000    15%    /nix store\n",
        )
        .unwrap();
        assert_eq!(s.mounted_on, "/nix store");
        assert_eq!(s.free_bytes, 600_000_000 * 1024);
        assert!(!s.nearly_full());
        assert_eq!(parse_df(STORE_DIR, ""), None);
        assert_eq!(parse_df(STORE_DIR, "df: /nix/store: No such file\n"), None);
    }

    #[tokio::test]
    async fn one_df_of_the_store() {
        let r = ScriptedRemote::new("builder", |_| {
            ok(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                /dev/vda 1000 900 100 90% /\n",
            )
        });
        let s = store_space(&r).await.unwrap();
        assert_eq!((s.size_bytes, s.free_bytes), (1000 * 1024, 100 * 1024));
        assert_eq!(r.argvs()[0], ["df", "-Pk", "/nix/store"]);
    }
}
