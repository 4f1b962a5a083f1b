//! A controller-side child run in a process group of its own, killed with
//! everything it started when the run gives up on it. A shell script's
//! children (`jq | curl` in a notify command, git's ssh, a password
//! manager's helper) outlived a kill of the shell alone, and held its pipes
//! open: the caller waited for them anyway, or left them running.

/// SIGKILL the process group `leader` leads.
pub fn kill(leader: u32) {
    let pid = i32::try_from(leader)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills a process group when dropped (its command bounded out, or its
/// future dropped by the second Ctrl-C), unless [`GroupKill::done`].
pub struct GroupKill(Option<u32>);

impl GroupKill {
    /// The group led by the child `leader` (`None`: it has no id, it was
    /// reaped already).
    pub fn new(leader: Option<u32>) -> GroupKill {
        GroupKill(leader)
    }

    /// The group's leader ended: nothing to kill (its id may be reused).
    pub fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(leader) = self.0 {
            kill(leader);
        }
    }
}
