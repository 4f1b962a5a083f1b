//! UTC timestamps in the two forms nixgate writes: compact
//! (`20261122T203000Z`, for tags, run ids and file names) and RFC 3339
//! (`2026-11-22T20:30:00Z`, for reports).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, as a civil UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    pub fn now() -> Utc {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Utc::from_unix(secs as i64)
    }

    /// Howard Hinnant's days-to-civil algorithm.
    pub fn from_unix(secs: i64) -> Utc {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `20261122T203000Z`
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-11-22T20:30:00Z`
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as nixgate writes it
/// (`2026-11-22T20:30:00Z`, fractions of a second allowed); `None` for
/// anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Hinnant's days-from-civil, the inverse of `Utc::from_unix`.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

/// A run id: the UTC start time plus four hex digits of salt, safe in unit
/// names, file names and git refs (`20261122T203000Z-3f9a`).
pub fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let salt = salt(nanos, std::process::id());
    format!("{}-{salt:04x}", Utc::now().compact())
}

/// A run id's salt: the clock's nanoseconds and the pid, each folded to 16
/// bits, mixed. Two rollouts started in the same second on a coarse clock
/// (the same nanoseconds, often 0) differ by their pids, and the hosts
/// take run ids as unique. (The pid was rotated out of the kept bits:
/// below 65536, the salt was the nanoseconds alone.)
fn salt(nanos: u32, pid: u32) -> u16 {
    let fold = |x: u32| (x ^ (x >> 16)) as u16;
    fold(nanos) ^ fold(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(Utc::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Utc::from_unix(1_795_379_400).compact(), "20261122T203000Z");
        assert_eq!(
            Utc::from_unix(951_782_400).rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn rfc3339_reads_back() {
        for secs in [0, 951_782_400, 1_795_379_400, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&Utc::from_unix(secs).rfc3339()), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2026-11-22T20:30:00.250Z"),
            Some(1_795_379_400)
        );
        for bad in [
            "",
            "2026-11-22 20:30:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T20:30:00+01:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// At the same instant (a coarse clock), every pid below 65536 gets
    /// its own salt, and larger pids still count; so does the clock.
    #[test]
    fn the_pid_changes_the_salt() {
        for nanos in [0, 1_000_000, 999_999_999] {
            let salts: std::collections::HashSet<u16> =
                (1..=0xffff).map(|pid| salt(nanos, pid)).collect();
            assert_eq!(salts.len(), 0xffff, "at {nanos} ns");
        }
        assert_ne!(salt(0, 4_194_303), salt(0, 4_194_302));
        assert_ne!(salt(1_000_000, 4242), salt(2_000_000, 4242));
    }

    #[test]
    fn run_ids_are_name_safe() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261122T203000Z-3f9a".len());
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
