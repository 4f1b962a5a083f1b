//! The account nixgate runs as, for the SSH user a host without `user`
//! connects as and for who a run report says ran it. OpenSSH takes it from
//! the process's uid; a cron job or a service may start with neither
//! `$USER` nor `$LOGNAME`, and falling back to `root` there would connect
//! a non-root cron user's rollout as root.

/// `$USER`, else `$LOGNAME`, else the uid's name in `/etc/passwd`.
pub fn name() -> Option<String> {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(|| {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            name_in_passwd(&passwd, &uid())
        })
}

/// This process's real uid (`getuid(2)`: a macOS controller has no
/// `/proc`).
pub fn uid() -> String {
    rustix::process::getuid().as_raw().to_string()
}

/// The name of `uid` in an `/etc/passwd` text.
fn name_in_passwd(passwd: &str, uid: &str) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_named_by_passwd() {
        let passwd = "root:x:0:0::/root:/bin/sh\ncron:x:1000:1000::/home/cron:/bin/sh\n";
        assert_eq!(name_in_passwd(passwd, "1000").as_deref(), Some("cron"));
        assert_eq!(name_in_passwd(passwd, "7"), None);
    }
}
