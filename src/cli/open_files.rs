//! The soft limit on open files, raised to the hard limit at start.
//!
//! Every host of a run holds an SSH connection (a TCP socket), a spare
//! connection ahead of each copy, an agent socket per login, and the
//! confirm's and soak's new connections on top: a few hundred hosts pass
//! the soft limit most systems start processes with (1024), while the hard
//! limit is far higher (524288 on systemd). Out of descriptors, every new
//! connection failed with EMFILE at once, and the soak's check read that
//! as hosts locking logins out. Raising the soft limit to the hard one
//! needs no privilege; a system that refuses leaves the limit as it was
//! (the connect error then says EMFILE, as this machine's own).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The most asked for when the hard limit is unlimited: macOS refuses a
/// soft limit above `kern.maxfilesperproc` (and "unlimited"), and no run
/// needs more.
const UNLIMITED_CAP: u64 = 1 << 20;

/// What macOS takes at most for a process's soft limit (`OPEN_MAX`):
/// its hard limit is usually unlimited, and asking for more than this is
/// refused (EINVAL), which left such a controller at its 256.
const MACOS_OPEN_MAX: u64 = 10_240;

/// Raise this process's soft limit on open files to its hard limit (or
/// the most the system takes). Best effort: a refusal is logged, never
/// fatal.
pub fn raise() {
    let now = getrlimit(Resource::Nofile);
    let Some(wanted) = raised(now) else {
        return;
    };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return;
    }
    let Some(second) = within(now, MACOS_OPEN_MAX) else {
        return;
    };
    if let Err(e) = setrlimit(Resource::Nofile, second) {
        tracing::warn!(
            "could not raise the open-file limit to {wanted:?} or {second:?}: {e}; \
             hundreds of hosts at once may run out (ulimit -n)"
        );
    }
}

/// `now` raised to at most `most`, if that is any higher.
fn within(now: Rlimit, most: u64) -> Option<Rlimit> {
    let wanted = now.maximum.unwrap_or(most).min(most);
    (now.current.is_some_and(|c| c < wanted)).then_some(Rlimit {
        current: Some(wanted),
        maximum: now.maximum,
    })
}

/// The limit to set instead of `now`, if it is any higher.
fn raised(now: Rlimit) -> Option<Rlimit> {
    let ceiling = now.maximum.unwrap_or(UNLIMITED_CAP);
    let current = now.current.unwrap_or(u64::MAX);
    (current < ceiling).then_some(Rlimit {
        current: Some(ceiling),
        maximum: now.maximum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit goes up to the hard one (capped when unlimited), and
    /// is never lowered.
    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        let limit = |current, maximum| Rlimit { current, maximum };
        assert_eq!(
            raised(limit(Some(1024), Some(524_288))),
            Some(limit(Some(524_288), Some(524_288)))
        );
        assert_eq!(
            raised(limit(Some(1024), None)),
            Some(limit(Some(UNLIMITED_CAP), None))
        );
        assert_eq!(raised(limit(Some(524_288), Some(524_288))), None);
        assert_eq!(raised(limit(None, None)), None);
        // Refused (macOS, unlimited hard limit): OPEN_MAX instead.
        assert_eq!(
            within(limit(Some(256), None), MACOS_OPEN_MAX),
            Some(limit(Some(10_240), None))
        );
        assert_eq!(within(limit(Some(20_000), None), MACOS_OPEN_MAX), None);
    }
}
