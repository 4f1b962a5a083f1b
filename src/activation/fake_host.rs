//! A small stateful fake NixOS host for pipeline tests: it holds the running
//! system, the boot default, profiles, transient switch units and their
//! status files, and reacts to the exact commands nixgate sends, answering as
//! the real tools do (`systemctl show` formats, collected units, exit codes).
//! Unknown commands panic, so a test notices any command it did not expect.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{deadman, inhibitors, known_good, leftovers, links, switch, verify_poll};
use crate::nix::StorePath;
use crate::remote::scripted::{ScriptedRemote, fail, ok};
use crate::remote::{Command, Exit, Output};

pub const SYSTEM: &str = "/nix/var/nix/profiles/system";
pub const KNOWN_GOOD: &str = "/nix/var/nix/profiles/nixgate-known-good";

/// How many reboots `cmds` (what a fake host ran) asked for.
pub fn reboots(cmds: &[String]) -> usize {
    cmds.iter()
        .filter(|c| c.contains("systemctl reboot"))
        .count()
}

/// How a closure behaves when activated on the fake host.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Exit code of `switch`/`test`.
    pub exit: u32,
    /// Non-zero: the boot loader cannot be installed (a full ESP, `/boot`
    /// not mounted). Both switch-to-configurations install it first for
    /// `switch` and `boot`, and exit with this before anything changes.
    pub boot_exit: u32,
    /// With `boot_exit`: the Perl switch-to-configuration (NixOS before
    /// 25.05), which exits saying nothing of its own, only the installer's
    /// words; `switch-to-configuration-ng` says "Failed to install bootloader".
    pub boot_loader_silent: bool,
    pub hang: bool,
    /// With `hang`: the link is switched first (a unit that never
    /// finishes starting, after the activation moved the link).
    pub hangs_switched: bool,
    pub flip_to: Option<StorePath>,
    pub repoint_profile_to: Option<StorePath>,
    /// NixOS 25.11 `switchInhibitors` refuses `switch`/`test`/`dry-activate`.
    pub inhibitor_message: bool,
    /// The new `init` is incompatible with the running one:
    /// `switch`/`test`/`dry-activate` exit 100 changing nothing.
    pub init_incompatible: bool,
    /// Once live, the system refuses new SSH connections (an sshd stopped
    /// or reconfigured; established sessions go on).
    pub cuts_ssh: bool,
    /// Once live, the system is off the network: established sessions
    /// are lost too.
    pub cuts_network: bool,
    /// Once live, new connections get no answer (a firewall dropping
    /// them): each handshake hangs until it times out (10 s); established
    /// sessions go on.
    pub drops_new_connections: bool,
    /// Once live, the system's sshd rejects the run's key at login (a
    /// candidate that dropped the user's authorized key): new connections
    /// fail authentication; established sessions go on.
    pub rejects_logins: bool,
    pub polls_to_finish: u32,
    pub systemd: &'static str,
    pub healthy: bool,
    /// Its switch leaves the units failed already alone (none of them is
    /// in its targets): they do not make it exit 4.
    pub spares_failed_units: bool,
    /// Once live, `app.service` crash-loops: stuck in `auto-restart` after
    /// a non-zero exit, not `failed`, and the switch exits 4 for it (both
    /// switch-to-configurations count such a unit as failed).
    pub crash_loops: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            exit: 0,
            boot_exit: 0,
            boot_loader_silent: false,
            hang: false,
            hangs_switched: false,
            flip_to: None,
            repoint_profile_to: None,
            inhibitor_message: false,
            init_incompatible: false,
            crash_loops: false,
            cuts_ssh: false,
            cuts_network: false,
            drops_new_connections: false,
            rejects_logins: false,
            polls_to_finish: 2,
            systemd: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-systemd-256.8",
            healthy: true,
            spares_failed_units: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub closure: StorePath,
    pub action: String,
    pub status: String,
    pub running: bool,
    pub polls_left: u32,
    pub log: Vec<String>,
}

impl Job {
    /// A `test` of `closure` that runs, and ends after two more polls.
    pub fn running_test(closure: &StorePath) -> Job {
        Job {
            closure: closure.clone(),
            action: "test".into(),
            status: "started".into(),
            running: true,
            polls_left: 2,
            log: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct State {
    pub current: StorePath,
    pub booted: StorePath,
    /// What the boot loader's default entry boots.
    pub boot_default: StorePath,
    pub profiles: BTreeMap<String, Vec<StorePath>>,
    /// Profiles switched to an older generation (1-based), not their newest.
    pub selected: BTreeMap<String, usize>,
    pub behaviours: HashMap<StorePath, Behaviour>,
    pub jobs: BTreeMap<String, Job>,
    pub lock_held: bool,
    pub polls: usize,
    /// Poll numbers (1-based) answered with a lost connection.
    pub drop_polls: Vec<usize>,
    pub records: BTreeMap<String, String>,
    /// Generations deleted (profile, generation).
    pub deleted: std::collections::BTreeSet<(String, usize)>,
    /// Health checks run so far; after `unhealthy_after` of them, every
    /// check fails (a host that turns unhealthy during a soak).
    pub health_checks: usize,
    pub unhealthy_after: Option<usize>,
    /// After that many health checks, new SSH connections are refused
    /// (a candidate whose lockout comes later: sshd restarted into a bad
    /// config by a timer); a switch to another system lets them in again.
    pub locks_out_after: Option<usize>,
    /// Another run holds the host lock (its holder's name): taking it is
    /// refused (flock's conflict exit) and its holder file read.
    pub lock_taken_by: Option<String>,
    /// The host reboots (onto its boot default) right after answering its
    /// first health check: a reboot the check did not see.
    pub reboot_after_health_check: bool,
    /// Fires of these actions (`test`, `boot`, ...) the host refuses to
    /// start, one each, as systemd does when a transient unit cannot be
    /// started (`Job for <unit> failed`).
    pub refuse_fires: Vec<&'static str>,
    /// New SSH connections are accepted.
    pub sshd_up: bool,
    /// Once refused, new SSH connections stay refused whatever is switched
    /// (a firewall rule or an sshd setting the old system does not put
    /// back); established sessions go on.
    pub lockout_stays: bool,
    /// Off the network: every command on every connection is lost.
    pub offline: bool,
    /// New connections get no answer: each handshake times out (10 s).
    pub drops_new: bool,
    /// New connections are rejected at login (the key offered refused).
    pub rejects_logins: bool,
    /// Logins rejected so far.
    pub logins_rejected: u32,
    /// The next fire that arms a revert cannot (`NixgateArmed=failed`).
    pub arm_fails: bool,
    /// Each armed unit's arming number (`deadman::Armed::generation`).
    pub arming_of: BTreeMap<String, u32>,
    /// How long each new connection's handshake takes (a slow link).
    pub handshake_takes: std::time::Duration,
    /// Armed dead-man timers: unit -> (the fake's count of armings when
    /// it was armed, the revert's args).
    pub timers: BTreeMap<String, (u64, Vec<String>)>,
    /// The next disarm arrives just after its timer fired: the revert
    /// runs, and the disarm says it is too late (exit 4).
    pub revert_beats_disarm: bool,
    /// A re-arm stops the earlier timer, then is refused (exit 5).
    pub refuse_rearm: bool,
    /// How long the revert takes: marked at once, done (record written,
    /// mark gone) after this.
    pub revert_takes: std::time::Duration,
    /// A revert is under way (marked, not done).
    pub reverting: bool,
    /// A revert under way that `systemctl stop` cannot stop.
    pub revert_unstoppable: bool,
    /// The revert runs and fails: its services come back, the host's
    /// link stays where it was, its record says `test-exited-1`.
    pub revert_fails: bool,
    /// The revert's `switch-to-configuration boot` of the system it puts
    /// back fails: the live system goes back, the boot default stays the
    /// candidate's, its record says `boot-failed`.
    pub revert_boot_fails: bool,
    /// When the revert runs, every session open before it is lost (new
    /// connections are answered): a network restart cutting established
    /// connections.
    pub revert_cuts_sessions: bool,
    /// Sessions opened so far (each remote's number), and the first number
    /// still answered.
    pub sessions: u64,
    pub lost_below: u64,
    /// The next re-arm arrives just after the first timer fired: the
    /// revert runs to its end, and the re-arm arms nothing (exit 4).
    pub revert_beats_rearm: bool,
    pub armings: u64,
    /// The revert's arguments of the last re-arm (`Arming::Replace`).
    pub rearmed_with: Option<Vec<String>>,
    /// The baseline recorded at the first known-good mark.
    pub baseline: Option<String>,
    /// Revert records written by fired timers, by path.
    pub revert_records: BTreeMap<String, String>,
    pub boot_id: u32,
    pub sudo_password_required: bool,
    /// systemd units in the `failed` state. Like NixOS's
    /// `switch-to-configuration`, a live switch exits 4 while any is.
    pub failed_units: std::collections::BTreeSet<String>,
    /// Units restarting after a failed start (`activating auto-restart`),
    /// listed only when asked for that sub-state.
    pub restarting_units: std::collections::BTreeSet<String>,
    /// Keys written, by destination.
    pub keys: BTreeMap<String, Vec<u8>>,
    /// A key (by name) that cannot be written.
    pub failing_key: Option<String>,
    /// Commands (as [`describe`]d, exactly) whose answer is lost, once per
    /// entry: `true` after the command ran on the host, `false` before.
    pub lose: Vec<(String, bool)>,
    /// Commands (as [`describe`]d) answered with exit 1 instead, once per
    /// entry (a host going down: its `/nix` unmounted under the session).
    pub break_once: Vec<String>,
    /// A fire's `nix-env --set` of the profile fails (once), as `nix-env`
    /// does on a full disk.
    pub profile_set_fails: bool,
    /// Someone else switches the host to this system (live, and as the
    /// system profile's new generation, as `nixos-rebuild switch` does),
    /// right before its revert runs (`true`) or right after (`false`).
    pub moved_by_other: Option<(StorePath, bool)>,
    /// The next this many lock commands fail (the host rebooting, a
    /// network blip: not another holder).
    pub lock_fails: u32,
    /// Another switch takes the lock right after a fire is refused.
    pub lock_taken_after_refusal: bool,
    /// The next refused fire's job runs even so (a start whose D-Bus call
    /// timed out went through).
    pub refused_yet_runs: bool,
    /// Refusals say the start timed out on D-Bus (systemd did not decide:
    /// whether it runs cannot be told), not that its job failed.
    pub refusals_time_out: bool,
    /// Stops of switch units fail (PID 1 too busy to answer).
    pub stops_fail: bool,
    /// Every command that reached the host (as [`describe`]d), over any
    /// connection, in order (a remote's own list has only its session's).
    pub ran: Vec<String>,
    /// GC roots of closures staged ahead (`gcroots::HOLD_STAGED`): link
    /// path -> closure.
    pub staged_roots: BTreeMap<String, String>,
}

impl Behaviour {
    /// A candidate whose systemd changes: deferred to the next boot.
    pub fn systemd_change() -> Behaviour {
        Behaviour {
            systemd: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-systemd-257.2",
            ..Default::default()
        }
    }
}

impl State {
    fn behaviour(&self, c: &StorePath) -> Behaviour {
        self.behaviours.get(c).cloned().unwrap_or_default()
    }

    /// What profile `p` points at: its selected generation, else its newest.
    pub fn profile(&self, p: &str) -> Option<&StorePath> {
        let gens = self.profiles.get(p)?;
        match self.selected.get(p) {
            Some(g) => gens.get(g - 1),
            None => gens.last(),
        }
    }

    /// The generation profile `p` points at (0: none).
    pub fn current_generation(&self, p: &str) -> usize {
        match self.selected.get(p) {
            Some(g) => *g,
            None => self.profiles.get(p).map_or(0, Vec::len),
        }
    }

    pub fn set_profile(&mut self, p: &str, c: &StorePath) {
        let gens = self.profiles.entry(p.to_owned()).or_default();
        if gens.last() != Some(c) {
            gens.push(c.clone());
        }
    }

    /// `systemctl list-units --plain --no-legend` lines of the failed
    /// units, and of those restarting when `restarting` (asked for the
    /// `auto-restart` sub-state), each after `prefix`.
    fn unit_lines(&self, restarting: bool, prefix: &str) -> String {
        let failed = self.failed_units.iter().map(|u| (u, "failed failed"));
        let looping = (self.restarting_units.iter())
            .filter(|_| restarting)
            .map(|u| (u, "activating auto-restart"));
        failed
            .chain(looping)
            .map(|(u, state)| format!("{prefix}{u} loaded {state} {u}\n"))
            .collect()
    }

    /// A lockout that outlives the system that made it is under way.
    fn lockout_stays_now(&self) -> bool {
        self.lockout_stays && !self.sshd_up
    }

    fn finish(&mut self, unit: &str) {
        let Some(job) = self.jobs.get(unit).cloned() else {
            return;
        };
        let b = self.behaviour(&job.closure);
        let live = job.action == "switch" || job.action == "test";
        let (code, log) = if live && b.inhibitor_message {
            (
                1,
                vec![
                    "Checking switch inhibitors... The following inhibitors changed: systemd"
                        .into(),
                    "Pre-switch check 'switchInhibitors' failed".into(),
                    "Pre-switch checks failed".into(),
                ],
            )
        } else if (job.action == "switch" || job.action == "boot") && b.boot_exit != 0 {
            let mut log = vec!["OSError: [Errno 28] No space left on device".to_string()];
            if !b.boot_loader_silent {
                log.push("Failed to install bootloader".into());
            }
            (b.boot_exit, log)
        } else if live && b.init_incompatible {
            (100, init_incompatible_warning())
        } else {
            if job.action == "switch" || job.action == "boot" {
                self.boot_default = self.profile(SYSTEM).cloned().unwrap_or(job.closure.clone());
            }
            if live {
                self.current = b.flip_to.clone().unwrap_or(job.closure.clone());
                // The system's own sshd: a candidate may cut new connections.
                self.sshd_up = !b.cuts_ssh && !b.cuts_network && !self.lockout_stays_now();
                self.offline = b.cuts_network;
                self.drops_new = b.drops_new_connections;
                self.rejects_logins = b.rejects_logins;
                self.restarting_units.clear();
                if b.crash_loops {
                    self.restarting_units.insert("app.service".into());
                }
            }
            if let Some(p) = &b.repoint_profile_to {
                self.set_profile(SYSTEM, p);
            }
            let mut code = if live { b.exit } else { b.boot_exit };
            let mut log = vec!["activating the configuration...".to_string()];
            if live && code == 4 {
                self.failed_units.insert("nginx.service".into());
            }
            if live && code == 0 && !self.failed_units.is_empty() && !b.spares_failed_units {
                code = 4;
            }
            if live && code == 0 && b.crash_loops {
                code = 4;
            }
            if code == 4 {
                let units: Vec<&str> = self.failed_units.iter().map(String::as_str).collect();
                log.push(format!(
                    "warning: the following units failed: {}",
                    units.join(", ")
                ));
            }
            (code, log)
        };
        let job = self.jobs.get_mut(unit).expect("job exists");
        job.status = format!("exited {code}");
        job.running = false;
        job.log = log;
        self.lock_held = false;
    }

    fn respond(&mut self, cmd: &Command, stdin: Option<&[u8]>) -> Output {
        if self.offline {
            return Output::new(Exit::ConnectionLost, "", "");
        }
        let a: Vec<&str> = cmd.argv().iter().map(String::as_str).collect();
        if a[0] == "sh" && a[2] == known_good::MARK {
            return self.mark(&a[4..], stdin.expect("the record comes on stdin"));
        }
        if a[0] == "sh" && a[2] == super::host_lock::LINUX && self.lock_fails > 0 {
            self.lock_fails -= 1;
            return fail(
                255,
                "ssh: connect to host web1 port 22: Connection refused\n",
            );
        }
        if a[0] == "sh" && a[2] == super::host_lock::LINUX {
            let held = super::host_lock::HELD;
            return match &self.lock_taken_by {
                Some(_) => Output::new(Exit::Code { code: held }, "", ""),
                None => ok("locked\n"),
            };
        }
        if let Some(holder) = &self.lock_taken_by
            && a[0] == "cat"
            && a[1].ends_with(".holder")
        {
            return ok(&format!("{holder}\n"));
        }
        if a[0] == "sh" && a[2] == crate::keys::upload::WRITE {
            if self.failing_key.as_deref() == Some(a[5]) {
                return fail(1, "chown: invalid user: 'nginx'\n");
            }
            let content = stdin.expect("the key comes on stdin").to_vec();
            let n = content.len();
            assert_eq!(a[8], n.to_string(), "the byte count sent");
            self.keys.insert(format!("{}/{}", a[4], a[5]), content);
            return ok(&format!("{n}\n"));
        }
        match a[0] {
            "true" if self.sudo_password_required => fail(1, "sudo: a password is required\n"),
            "true" => ok(""),
            "nix-store" => ok(a[2]),
            "nix-env" => {
                let c = StorePath::parse(a[4]).expect("store path");
                self.set_profile(a[2], &c);
                ok("")
            }
            "rm" if a[1] == "-f" && a.len() == 3 && self.staged_roots.contains_key(a[2]) => {
                self.staged_roots.remove(a[2]);
                ok("")
            }
            "readlink" => {
                let n = self.profiles.get(a[1]).map_or(0, Vec::len);
                let base = a[1].rsplit('/').next().unwrap_or_default();
                ok(&format!("{base}-{n}-link\n"))
            }
            "systemctl" if a[1] == "list-units" => {
                let restarting = a.iter().any(|w| {
                    w.strip_prefix("--state=")
                        .is_some_and(|s| s.split(',').any(|s| s == "auto-restart"))
                });
                ok(&self.unit_lines(restarting, ""))
            }
            "systemctl" if a[1] == "reset-failed" => {
                for u in &a[3..] {
                    self.failed_units.remove(*u);
                }
                ok("")
            }
            "systemctl" if a[1] == "stop" => {
                let unit = a[2].trim_end_matches(".service");
                if let Some(j) = self.jobs.get_mut(unit) {
                    j.running = false;
                }
                self.lock_held = false;
                ok("")
            }
            "systemd-run" => {
                // The reboot: the host comes back on its boot default,
                // `/run/keys` (a tmpfs) empty.
                self.keys.retain(|k, _| !k.starts_with("/run/keys/"));
                self.booted = self.boot_default.clone();
                self.current = self.boot_default.clone();
                self.boot_id += 1;
                ok("")
            }
            "cat" => ok(&format!("boot-{}\n", self.boot_id)),
            "timeout" => {
                self.health_checks += 1;
                let tired = self.unhealthy_after.is_some_and(|n| self.health_checks > n);
                if self
                    .locks_out_after
                    .is_some_and(|n| self.health_checks >= n)
                {
                    self.sshd_up = false;
                }
                let answer = if self.behaviour(&self.current.clone()).healthy && !tired {
                    ok("active\n")
                } else {
                    Output::new(Exit::Code { code: 3 }, "failed\n", "")
                };
                if std::mem::take(&mut self.reboot_after_health_check) {
                    self.keys.retain(|k, _| !k.starts_with("/run/keys/"));
                    self.booted = self.boot_default.clone();
                    self.current = self.boot_default.clone();
                    self.boot_id += 1;
                }
                answer
            }
            p if p.ends_with("/bin/switch-to-configuration") && a[1] == "dry-activate" => {
                let c =
                    StorePath::parse(p.trim_end_matches("/bin/switch-to-configuration")).unwrap();
                if self.behaviour(&c).inhibitor_message {
                    fail(
                        1,
                        "Pre-switch check 'switchInhibitors' failed\nPre-switch checks failed\n",
                    )
                } else if self.behaviour(&c).init_incompatible {
                    fail(100, &init_incompatible_warning().join("\n"))
                } else {
                    Output::new(
                        Exit::Code { code: 0 },
                        "",
                        "would activate the configuration...\nwould restart the following units: nginx.service\n",
                    )
                }
            }
            "sh" => self.script(&a),
            _ => panic!("fake host: unexpected command {a:?}"),
        }
    }

    /// The known-good history as `known_good::LIST` prints it (`want`:
    /// the one closure whose records it prints whole).
    fn list(&self, prof: &str, want: &str) -> Output {
        let base = prof.rsplit('/').next().unwrap_or_default();
        let n = self.current_generation(prof);
        let mut out = if n == 0 {
            "NixgateCurrent=\n".to_owned()
        } else {
            format!("NixgateCurrent={base}-{n}-link\n")
        };
        for (i, c) in self.profiles.get(prof).into_iter().flatten().enumerate() {
            let g = i + 1;
            if self.deleted.contains(&(prof.to_owned(), g)) {
                continue;
            }
            out.push_str(&format!("NixgateGen={g}\t{c}\tpresent\n"));
            let Some(r) = self.records.get(&g.to_string()) else {
                continue;
            };
            if want.is_empty() || want == c.as_str() {
                out.push_str(&format!("NixgateRecord={g}\t{r}\n"));
            } else {
                let v: serde_json::Value = serde_json::from_str(r).expect("a record");
                let of = v["closure"].as_str().expect("a record's closure");
                out.push_str(&format!("NixgateRecordOf={g}\t{of}\n"));
            }
        }
        ok(&out)
    }

    /// `known_good::REVOKE`: back to the newest generation before `g`.
    fn revoke(&mut self, prof: &str, g: usize) -> Output {
        let gone = |p: &usize| self.deleted.contains(&(prof.to_owned(), *p));
        let replaced = self
            .records
            .get(&g.to_string())
            .and_then(|r| replaced_of(r))
            .filter(|p| *p < g && !gone(p));
        let prev = replaced.or_else(|| (1..g).rev().find(|p| !gone(p)));
        match prev {
            Some(p) => {
                self.selected.insert(prof.to_owned(), p);
            }
            None => {
                self.profiles.remove(prof);
            }
        }
        self.deleted.insert((prof.to_owned(), g));
        if let Some(r) = self.records.remove(&g.to_string()) {
            self.records.insert(format!("{g}.revoked"), r);
        }
        ok(&format!(
            "NixgatePrevious={}\n",
            prev.map(|p| p.to_string()).unwrap_or_default()
        ))
    }

    fn link(&self, path: &str) -> Option<StorePath> {
        match path {
            "/run/current-system" => Some(self.current.clone()),
            "/run/booted-system" => Some(self.booted.clone()),
            p => self.profile(p).cloned(),
        }
    }

    fn script(&mut self, a: &[&str]) -> Output {
        let script = a[2];
        if script == links::READ_LINK {
            let target = self.link(a[4]);
            ok(&target.map(|t| format!("{t}\n")).unwrap_or_default())
        } else if script == links::READ_LINKS {
            let lines: String = a[4..]
                .iter()
                .map(|p| {
                    format!(
                        "{}\n",
                        self.link(p).map(|t| t.to_string()).unwrap_or_default()
                    )
                })
                .collect();
            ok(&lines)
        } else if script == links::READ_START {
            // The known-good only when its generation has its record (of
            // its closure), or none while no generation up to it has one.
            let kg = self.current_generation(a[6]);
            let target = self.link(a[6]);
            let own = (self.records.get(&kg.to_string()))
                .and_then(|r| serde_json::from_str::<known_good::KnownGoodRecord>(r).ok())
                .is_some_and(|r| Some(&r.closure) == target.as_ref());
            let older_recorded = self
                .records
                .keys()
                .filter_map(|k| k.parse::<usize>().ok())
                .any(|k| k <= kg);
            let recorded = own || !older_recorded;
            let known_good = target.filter(|_| recorded);
            let lines = format!(
                "{}\n{}\n{}\n",
                self.link(a[4]).map(|t| t.to_string()).unwrap_or_default(),
                self.link(a[5]).map(|t| t.to_string()).unwrap_or_default(),
                known_good.map(|t| t.to_string()).unwrap_or_default(),
            );
            ok(&lines)
        } else if script == switch::FIRE_LINUX {
            self.fire_linux(a)
        } else if script == verify_poll::POLL_LINUX {
            self.polls += 1;
            if self.drop_polls.contains(&self.polls) {
                return Output::new(Exit::ConnectionLost, "", "");
            }
            let unit = a[4].trim_end_matches(".service").to_owned();
            ok(&self.poll(&unit, a[8]))
        } else if script == switch::LOG_TAIL {
            let log = self
                .jobs
                .get(a[5])
                .map(|j| j.log.join("\n"))
                .unwrap_or_default();
            ok(&format!("{log}\n"))
        } else if script == inhibitors::COMPARE {
            // `$1`: /run/current-system, or a system named by its path (a
            // rollback's comparison against the system run before).
            let cur = StorePath::parse(a[4]).unwrap_or(self.current.clone());
            let cur = self.behaviour(&cur).systemd;
            let cand = self.behaviour(&StorePath::parse(a[5]).unwrap()).systemd;
            ok(&format!(
                "systemd\t/nix/store/{cur}\t/nix/store/{cand}\n\
                 sw/lib/systemd/systemd\t/nix/store/{cur}/lib/systemd/systemd\t/nix/store/{cand}/lib/systemd/systemd\n\
                 etc/systemd/system/dbus.service\t/nix/store/cccccccccccccccccccccccccccccccc-unit-dbus.service/dbus.service\t/nix/store/cccccccccccccccccccccccccccccccc-unit-dbus.service/dbus.service\n\
                 kernel\t/nix/store/dddddddddddddddddddddddddddddddd-linux-6.6.60/bzImage\t/nix/store/dddddddddddddddddddddddddddddddd-linux-6.6.60/bzImage\n{}NixgateFailedUnits=listed\n",
                self.unit_lines(
                    inhibitors::COMPARE.contains("--state=failed,auto-restart"),
                    "NixgateFailed="
                )
            ))
        } else if script == deadman::STOP_REVERT_LINUX {
            if self.revert_unstoppable {
                return fail(1, &format!("{}.service is still active\n", a[4]));
            }
            // A revert stopped part-way: nothing more of it happens.
            self.reverting = false;
            self.timers.remove(a[4]);
            ok("")
        } else if script == switch::STOP_LINUX {
            if self.stops_fail {
                return fail(
                    1,
                    &format!("{} is still in a state systemctl could not read\n", a[5]),
                );
            }
            // `a[4]`: the job dir, where each unit's job is marked stopped.
            for unit in &a[5..] {
                if let Some(j) = self.jobs.get_mut(unit.trim_end_matches(".service")) {
                    j.running = false;
                }
            }
            self.lock_held = false;
            ok("")
        } else if script == deadman::DISARM_LINUX {
            // Guarded: only while the link resolves to the given path.
            if let Some(want) = a.get(10)
                && self.current.to_string() != *want
            {
                return fail(3, &format!("not disarmed: {} is not {want}\n", a[9]));
            }
            // Never an arming later than the one it was sent for.
            let arming: u32 = a[8].parse().expect("an arming number");
            if self.arming_of.get(a[4]).is_some_and(|now| *now > arming) {
                return fail(6, "not disarmed: a later arming stands\n");
            }
            if self.reverting {
                return fail(4, "not disarmed: the revert is running\n");
            }
            self.arming_of.remove(a[4]);
            let timer = self.timers.remove(a[4]);
            if std::mem::take(&mut self.revert_beats_disarm)
                && let Some((_, args)) = timer
            {
                self.revert(&args);
                return fail(4, "not disarmed: the revert is running\n");
            }
            ok("")
        } else if script == deadman::READ_RECORD {
            match self.revert_records.get(a[4]) {
                Some(record) => ok(record),
                None if self.reverting => ok("NixgateRevertUnderWay\n"),
                None => ok(""),
            }
        } else if script == known_good::READ_BASELINE {
            ok(&self.baseline.as_ref().map_or(String::new(), |c| {
                format!(r#"{{"closure":"{c}","recorded_at":"2026-12-01T00:00:00Z","run_id":"r0"}}"#)
            }))
        } else if script == known_good::LIST {
            self.list(a[4], a.get(6).copied().unwrap_or_default())
        } else if script == known_good::UNDO_MARK {
            self.undo_mark(&a[4..])
        } else if script == leftovers::LIST {
            self.list_units(a[5])
        } else if script == leftovers::RUN_REVERT {
            if let Some((_, args)) = self.timers.remove(a[4]) {
                self.revert(&args);
            }
            ok("")
        } else if script == known_good::REVOKE {
            self.revoke(a[4], a[6].parse().expect("a generation"))
        } else if script == crate::nix::gcroots::HOLD_STAGED {
            let dir = format!("{}/", a[4]);
            if a[7] == "clean" {
                self.staged_roots
                    .retain(|l, _| !l.starts_with(&dir) || l[dir.len()..] == *a[5]);
            }
            self.staged_roots
                .insert(format!("{dir}{}", a[5]), a[6].to_owned());
            ok("")
        } else if script == known_good::SOAKED {
            self.soaked(a[4], a[6], a[7])
        } else {
            panic!("fake host: unexpected script {a:?}")
        }
    }
}

impl State {
    /// `switch::FIRE_LINUX` (`a`: lock, unit, status, current, ticks,
    /// profile, dir, log, again, the profile to set and its closure (both
    /// empty: none) and `nix-env`'s limit, the revert to arm (four, all
    /// empty: none; armed by [`FakeHost::answer`] before this), then
    /// `systemd-run` and its arguments):
    /// the lock check, the fire, and a first poll that does not count in
    /// `polls` (`drop_polls` numbers the polls of their own).
    fn fire_linux(&mut self, a: &[&str]) -> Output {
        if self.lock_held {
            let holders: String = self
                .jobs
                .iter()
                .filter(|(_, j)| j.running)
                .map(|(u, _)| format!("NixgateHolder={u}.service active running\n"))
                .collect();
            return ok(&format!("NixgateLock=held\n{holders}"));
        }
        let set = if a[13].is_empty() {
            ""
        } else if std::mem::take(&mut self.profile_set_fails) {
            return Output::new(
                Exit::Code { code: 0 },
                "NixgateLock=free\nNixgateProfileSet=1\n",
                "error: writing to file: No space left on device\n",
            );
        } else {
            self.set_profile(a[13], &StorePath::parse(a[14]).expect("a store path"));
            "NixgateProfileSet=0\n"
        };
        let unit = a[21].trim_start_matches("--unit=").to_owned();
        let (program, action) = (a[a.len() - 2], a[a.len() - 1]);
        let refuse = |why: String| {
            Output::new(
                Exit::Code { code: 0 },
                format!("NixgateLock=free\n{set}NixgateFire=1\n"),
                why,
            )
        };
        if self.jobs.get(&unit).is_some_and(|j| j.running) {
            // Current systemd's words (older ones said "already exists").
            return refuse(format!(
                "Failed to start transient service unit: Unit {unit}.service was already loaded or has a fragment file.\n"
            ));
        }
        if let Some(i) = self.refuse_fires.iter().position(|a| *a == action) {
            self.refuse_fires.remove(i);
            self.lock_held |= std::mem::take(&mut self.lock_taken_after_refusal);
            if std::mem::take(&mut self.refused_yet_runs) {
                self.start_job(&unit, program, action);
            }
            if self.refusals_time_out {
                return refuse(
                    "Failed to start transient service unit: Connection timed out\n".into(),
                );
            }
            return refuse(format!(
                "Job for {unit}.service failed because of unavailable resources or another system error.\n"
            ));
        }
        self.start_job(&unit, program, action);
        let poll = self.poll(&unit, a[9]);
        Output::new(
            Exit::Code { code: 0 },
            format!("NixgateLock=free\n{set}NixgateFire=0\n{poll}"),
            format!("Running as unit: {unit}.service; invocation ID: 0c1b2a\n"),
        )
    }

    /// One poll of `unit` as `verify_poll::POLL_LINUX` answers it; a
    /// running job gets on one poll's worth. `profile` (when not empty)
    /// is read once the job has exited.
    /// The job of `unit` starts (and takes the switch lock).
    fn start_job(&mut self, unit: &str, program: &str, action: &str) {
        let closure =
            StorePath::parse(program.trim_end_matches("/bin/switch-to-configuration")).unwrap();
        let b = self.behaviour(&closure);
        let polls_left = if b.hang { u32::MAX } else { b.polls_to_finish };
        if b.hang && b.hangs_switched && (action == "switch" || action == "test") {
            self.current = closure.clone();
        }
        self.jobs.insert(
            unit.to_owned(),
            Job {
                closure,
                action: action.to_owned(),
                status: "started".into(),
                running: true,
                polls_left,
                log: vec!["activating the configuration...".into()],
            },
        );
        self.lock_held = true;
    }

    fn poll(&mut self, unit: &str, profile: &str) -> String {
        if let Some(j) = self.jobs.get_mut(unit)
            && j.running
        {
            j.polls_left = j.polls_left.saturating_sub(1);
            if j.polls_left == 0 {
                self.finish(unit);
            }
        }
        let (show, status) = match self.jobs.get(unit) {
            Some(j) if j.running => (
                "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=loaded\nActiveState=active\nSubState=running\n",
                j.status.clone(),
            ),
            Some(j) => (
                "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n",
                j.status.clone(),
            ),
            None => (
                "Result=success\nExecMainCode=0\nExecMainStatus=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n",
                "absent".into(),
            ),
        };
        let mut out = format!(
            "{show}NixgateStatus={status}\nNixgateCurrent={}\n",
            self.current
        );
        if status.starts_with("exited") && !profile.is_empty() {
            let seen = self
                .profile(profile)
                .map(|p| p.to_string())
                .unwrap_or_default();
            out.push_str(&format!("NixgateProfile={seen}\n"));
        }
        out
    }

    /// `known_good::MARK` (`a`: profile, dir, closure, generation to
    /// re-select, run, record length, baseline root, file, closure, time).
    fn mark(&mut self, a: &[&str], body: &[u8]) -> Output {
        let (prof, closure, reselect, run) = (a[0], a[2], a[3], a[4]);
        assert_eq!(body.len().to_string(), a[5], "the record's length");
        let c = StorePath::parse(closure).expect("store path");
        let base = prof.rsplit('/').next().unwrap_or_default().to_owned();
        let old = self.current_generation(prof);
        let ours = format!("\"run_id\":\"{run}\"");
        if old > 0
            && self.profile(prof) == Some(&c)
            && let Some(r) = self.records.get(&old.to_string())
            && r.contains(&ours)
        {
            let replaced = replaced_of(r).map(|g| g.to_string()).unwrap_or_default();
            let created = r.contains("\"created\":true");
            let soak = if r.contains(SOAK_PENDING) { "true" } else { "" };
            return ok(&format!(
                "NixgateNew={base}-{old}-link\nNixgateReplaced={replaced}\nNixgateCreated={created}\nNixgateSoak={soak}\n"
            ));
        }
        // What an earlier run's re-selection kept: that run is over.
        let mine = format!(".before-{run}");
        self.records
            .retain(|k, _| !k.contains(".before-") || k.ends_with(&mine));
        if old == 0 && !a[8].is_empty() {
            self.baseline.get_or_insert_with(|| a[8].to_owned());
        }
        let last = self.profiles.get(prof).map_or(0, Vec::len);
        let mut lineage = String::new();
        let new = if reselect.is_empty() {
            self.set_profile(prof, &c);
            self.selected.remove(prof);
            self.profiles.get(prof).map_or(0, Vec::len)
        } else {
            let g: usize = reselect.parse().expect("a generation");
            let gens = self.profiles.get(prof).cloned().unwrap_or_default();
            if gens.get(g - 1) != Some(&c) {
                return fail(3, "generation is not the closure\n");
            }
            // Its own record, kept for an undo to put back.
            let kept = format!("{g}{mine}");
            if let Some(r) = self.records.get(&g.to_string())
                && !r.contains(&ours)
                && !self.records.contains_key(&kept)
            {
                let r = r.clone();
                self.records.insert(kept, r);
            }
            // Where the profile was when `g` was first marked (see MARK).
            if let Some(r) = self.records.get(&g.to_string()) {
                let v: serde_json::Value = serde_json::from_str(r).expect("a record");
                let older = |k: &str| v[k].as_u64().filter(|&n| n < g as u64);
                if let Some(n) = older("lineage").or(older("replaced")) {
                    lineage = format!("\"lineage\":{n},");
                }
            }
            self.selected.insert(prof.to_owned(), g);
            g
        };
        let text = String::from_utf8_lossy(body);
        let rest = text.trim_end().strip_prefix('{').expect("a JSON object");
        let replaced = if old == 0 {
            "null".to_owned()
        } else {
            old.to_string()
        };
        let created = reselect.is_empty() && new > last;
        // A re-used generation's record, from an earlier run: kept for an undo.
        if reselect.is_empty()
            && !created
            && let Some(r) = self.records.get(&new.to_string())
            && !r.contains(&ours)
        {
            let r = r.clone();
            self.records.entry(format!("{new}{mine}")).or_insert(r);
        }
        // A soak follows: provisional unless the generation was proven
        // already (its record, of this closure, final).
        let proven = self.records.get(&new.to_string()).is_some_and(|r| {
            r.contains(&format!("\"closure\":\"{closure}\"")) && !r.contains(SOAK_PENDING)
        });
        let pending = a.get(10) == Some(&"pending") && (created || !proven);
        let soak = if pending { SOAK_PENDING } else { "" };
        self.records.insert(
            new.to_string(),
            format!(
                "{{\"generation\":{new},\"replaced\":{replaced},\"created\":{created},{lineage}{soak}{rest}"
            ),
        );
        let replaced = if old == 0 { String::new() } else { replaced };
        let soak = if pending { "true" } else { "" };
        ok(&format!(
            "NixgateNew={base}-{new}-link\nNixgateReplaced={replaced}\nNixgateCreated={created}\nNixgateSoak={soak}\n"
        ))
    }

    /// `known_good::SOAKED`: generation `g`'s record, run `run`'s and
    /// pending, made final.
    fn soaked(&mut self, prof: &str, g: &str, run: &str) -> Output {
        let ours = format!("\"run_id\":\"{run}\"");
        // As SOAKED: only while the known-good profile is on it.
        let on_it = self.current_generation(prof).to_string() == g;
        match self.records.get_mut(g) {
            Some(r) if on_it && r.contains(&ours) && r.contains(SOAK_PENDING) => {
                *r = r.replacen(SOAK_PENDING, "", 1);
                ok(&format!("NixgateSoaked={g}\n"))
            }
            _ => ok("NixgateSoaked=\n"),
        }
    }

    /// `known_good::UNDO_MARK` (`a`: profile, dir, run, re-selected).
    fn undo_mark(&mut self, a: &[&str]) -> Output {
        let (prof, run, reselected) = (a[0], a[2], a[3]);
        let n = self.current_generation(prof);
        let ours = format!("\"run_id\":\"{run}\"");
        let mine = format!(".before-{run}");
        let kept = self.records.remove(&format!("{n}{mine}"));
        self.records.retain(|k, _| !k.ends_with(&mine));
        let Some(rec) = self
            .records
            .get(&n.to_string())
            .filter(|r| r.contains(&ours))
        else {
            return ok("NixgateUndo=none\n");
        };
        let prev = replaced_of(rec);
        let created = rec.contains("\"created\":true");
        // This run's record goes for the one it overwrote (a re-selection's,
        // or a re-used generation's).
        let put_back = kept;
        if let Some(own) = &put_back
            && let Some(r) = self.records.insert(n.to_string(), own.clone())
        {
            self.records.insert(format!("{n}.undone"), r);
        }
        if prev == Some(n) {
            return ok("NixgateUndo=kept\n");
        }
        match prev {
            Some(p) => {
                self.selected.insert(prof.to_owned(), p);
            }
            None => {
                self.profiles.remove(prof);
            }
        }
        if reselected.is_empty() && created {
            self.deleted.insert((prof.to_owned(), n));
        }
        if put_back.is_none()
            && let Some(r) = self.records.remove(&n.to_string())
        {
            self.records.insert(format!("{n}.undone"), r);
        }
        ok(&format!("NixgateUndo={n}\n"))
    }

    /// `leftovers::LIST`: switch jobs and armed timers; a running job
    /// gets on (one poll's worth) each time it is looked at. Then the last
    /// live switch of `cand` (the last such job in unit order: the fake's
    /// runs are named in the order they run).
    fn list_units(&mut self, cand: &str) -> Output {
        let running: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.running)
            .map(|(u, _)| u.clone())
            .collect();
        for u in &running {
            let j = self.jobs.get_mut(u).expect("job");
            j.polls_left = j.polls_left.saturating_sub(1);
            if j.polls_left == 0 {
                self.finish(u);
            }
        }
        let mut out = String::new();
        for (u, j) in &self.jobs {
            if j.running {
                out.push_str(&format!("NixgateUnit={u}.service active running\n"));
            }
        }
        for u in self.timers.keys() {
            out.push_str(&format!("NixgateUnit={u}.timer active waiting\n"));
        }
        let live =
            |j: &&Job| j.closure.as_str() == cand && ["test", "switch"].contains(&&*j.action);
        if let Some((u, j)) = self.jobs.iter().rfind(|(_, j)| live(j)) {
            out.push_str(&format!("NixgateLastSwitch={u} {}\n", j.status));
        }
        ok(&out)
    }

    /// A dead-man timer fired: what the revert script does (`args`: record
    /// dir, run, previous, candidate, profile, boot default before, unit).
    fn revert(&mut self, args: &[String]) {
        let (dir, run, previous, candidate, profile, before, unit, _timer) = (
            &args[0], &args[1], &args[2], &args[3], &args[4], &args[5], &args[6], &args[7],
        );
        // Every attempt's name, as REVERT stops them.
        for u in [unit.clone(), format!("{unit}-try2"), format!("{unit}-try3")] {
            if let Some(j) = self.jobs.get_mut(&u) {
                j.running = false;
            }
        }
        self.lock_held = false;
        let moved = self.moved_by_other.take();
        if let Some((to, true)) = &moved {
            self.switched_by_other(profile, to);
        }
        // As REVERT: a host running and booting a third system was moved
        // by someone else, and is left alone.
        let third = ![candidate, previous].contains(&&self.current.to_string());
        if third && self.profile(profile) == Some(&self.current) {
            let record = format!(
                r#"{{"run_id":"{run}","reverted_at":"2026-12-02T00:00:00Z","from":"{candidate}","to":"{previous}","result":"host-moved","current":"{}"}}"#,
                self.current
            );
            self.revert_records
                .insert(format!("{dir}/{run}.json"), record);
            return;
        }
        let mut result = "ok";
        if !before.is_empty() {
            let b = StorePath::parse(before).expect("store path");
            self.set_profile(profile, &b);
            if self.revert_boot_fails {
                result = "boot-failed";
            } else {
                self.boot_default = b;
            }
        }
        if self.revert_cuts_sessions {
            self.lost_below = self.sessions;
        }
        // Its services (sshd among them) come back either way; a failed
        // revert leaves the link where it was.
        let prev = StorePath::parse(previous).expect("store path");
        let b = self.behaviour(&prev);
        self.sshd_up = !b.cuts_ssh && !b.cuts_network && !self.lockout_stays_now();
        self.offline = b.cuts_network;
        self.drops_new = b.drops_new_connections;
        self.rejects_logins = b.rejects_logins;
        if self.revert_fails {
            result = "test-exited-1";
        } else {
            self.current = prev;
        }
        let now = &self.current;
        let record = format!(
            r#"{{"run_id":"{run}","reverted_at":"2026-12-02T00:00:00Z","from":"{candidate}","to":"{previous}","result":"{result}","current":"{now}"}}"#
        );
        self.revert_records
            .insert(format!("{dir}/{run}.json"), record);
        if let Some((to, false)) = &moved {
            self.switched_by_other(profile, to);
        }
    }

    /// Someone else's `nixos-rebuild switch` to `to`: it runs, boots, and
    /// takes SSH connections.
    fn switched_by_other(&mut self, profile: &str, to: &StorePath) {
        self.set_profile(profile, to);
        self.selected.remove(profile);
        self.current = to.clone();
        self.boot_default = to.clone();
        self.sshd_up = true;
        self.offline = false;
        self.drops_new = false;
        self.rejects_logins = false;
    }
}

/// The fake host; clones share state.
#[derive(Clone)]
pub struct FakeHost(Arc<Mutex<State>>);

impl crate::activation::Reconnect<ScriptedRemote> for FakeHost {
    fn fresh(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<ScriptedRemote>> + Send + '_>,
    > {
        Box::pin(async {
            if self.state().drops_new {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                anyhow::bail!("timed out (fake firewall drops new connections)");
            }
            let slow = self.state().handshake_takes;
            tokio::time::sleep(slow).await;
            anyhow::ensure!(self.state().sshd_up, "connection refused (fake sshd down)");
            let mut st = self.state();
            if st.rejects_logins {
                st.logins_rejected += 1;
                return Err(anyhow::Error::new(crate::ssh::ConnectError::AuthFailed {
                    target: "web1".into(),
                    user: "deploy".into(),
                    tried: vec!["agent key ed25519 (SHA256:x): rejected".into()],
                }));
            }
            drop(st);
            Ok(self.remote())
        })
    }
}

impl FakeHost {
    /// Arm a dead-man timer: it fires after its seconds (tokio time) unless
    /// disarmed or re-armed first.
    fn arm(&self, a: &[&str], script: &[u8]) -> Output {
        let unit = a[4].to_owned();
        let secs: u64 = a[5].parse().expect("seconds");
        if a[7] == "replace" && self.state().refuse_rearm {
            self.state().timers.remove(&unit);
            return Output::new(
                Exit::Code { code: 5 },
                "",
                "nothing armed: the earlier timer was stopped and the new one refused\n",
            );
        }
        if a[7] == "replace" && self.state().reverting {
            return Output::new(
                Exit::Code { code: 4 },
                "",
                "not re-armed: the revert is running\n",
            );
        }
        if a[7] == "replace" && std::mem::take(&mut self.state().revert_beats_rearm) {
            let mut st = self.state();
            st.arming_of.remove(&unit);
            if let Some((_, args)) = st.timers.remove(&unit) {
                st.revert(&args);
            }
            return Output::new(
                Exit::Code { code: 4 },
                "",
                "not re-armed: the revert is running\n",
            );
        }
        let arming = if a[7] == "replace" { 2 } else { 1 };
        self.state().arming_of.insert(unit.clone(), arming);
        self.start_timer(unit.clone(), secs, &String::from_utf8_lossy(script));
        if arming == 2 {
            let mut st = self.state();
            st.rearmed_with = st.timers.get(&unit).map(|(_, args)| args.clone());
        }
        ok("")
    }

    /// A fire that arms the revert first (`switch::FIRE_LINUX`): nothing
    /// is armed while the lock is held; a timer already armed is kept;
    /// `arm_fails` refuses it (nothing fires).
    fn fire_arming(&self, cmd: &Command, unit: &str, secs: &str, body: &str) -> Output {
        if self.state().lock_held {
            return self.state().respond(cmd, None);
        }
        let armed = if std::mem::take(&mut self.state().arm_fails) {
            return Output::new(
                Exit::Code { code: 0 },
                "NixgateLock=free\nNixgateArmed=failed\n",
                "Failed to start transient timer unit: Connection timed out\n",
            );
        } else if self.state().timers.contains_key(unit) {
            "kept"
        } else {
            self.state().arming_of.insert(unit.to_owned(), 1);
            self.start_timer(unit.to_owned(), secs.parse().expect("seconds"), body);
            "new"
        };
        let out = self.state().respond(cmd, None);
        let stdout = format!("NixgateArmed={armed}\n{}", out.stdout_str());
        Output::new(out.exit.clone(), stdout, out.stderr_str())
    }

    /// Start the timer `unit` running the revert `script` after `secs`.
    fn start_timer(&self, unit: String, secs: u64, script: &str) {
        // The revert's arguments: its `set -- ...` line (none has spaces).
        let set = script
            .lines()
            .find_map(|l| l.strip_prefix("set -- "))
            .expect("the revert script sets its arguments");
        let args: Vec<String> = set
            .split(' ')
            .map(|w| w.trim_matches('\'').to_owned())
            .collect();
        let n = {
            let mut st = self.state();
            st.armings += 1;
            let n = st.armings;
            st.timers.insert(unit.clone(), (n, args));
            n
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            let (args, takes) = {
                let mut st = me.state();
                let Some((armed, args)) = st.timers.get(&unit).cloned() else {
                    return;
                };
                if armed != n {
                    return;
                }
                st.timers.remove(&unit);
                st.reverting = true;
                (args, st.revert_takes)
            };
            tokio::time::sleep(takes).await;
            let mut st = me.state();
            if st.reverting {
                st.revert(&args);
                st.reverting = false;
            }
        });
    }

    /// A host running `current`, whose system profile and known-good
    /// profile both point at it.
    pub fn new(current: &StorePath) -> Self {
        let mut profiles = BTreeMap::new();
        profiles.insert(SYSTEM.to_owned(), vec![current.clone()]);
        profiles.insert(KNOWN_GOOD.to_owned(), vec![current.clone()]);
        // Its known-good generation has its record, as every mark leaves.
        let mut records = BTreeMap::new();
        records.insert("1".to_owned(), first_record(current));
        FakeHost(Arc::new(Mutex::new(State {
            current: current.clone(),
            booted: current.clone(),
            boot_default: current.clone(),
            profiles,
            selected: BTreeMap::new(),
            behaviours: HashMap::new(),
            jobs: BTreeMap::new(),
            lock_held: false,
            polls: 0,
            drop_polls: Vec::new(),
            records,
            deleted: Default::default(),
            health_checks: 0,
            unhealthy_after: None,
            locks_out_after: None,
            lock_taken_by: None,
            reboot_after_health_check: false,
            refuse_fires: Vec::new(),
            sshd_up: true,
            lockout_stays: false,
            offline: false,
            drops_new: false,
            rejects_logins: false,
            logins_rejected: 0,
            arm_fails: false,
            arming_of: BTreeMap::new(),
            handshake_takes: std::time::Duration::ZERO,
            timers: BTreeMap::new(),
            revert_beats_disarm: false,
            refuse_rearm: false,
            revert_beats_rearm: false,
            revert_fails: false,
            revert_boot_fails: false,
            revert_takes: std::time::Duration::ZERO,
            reverting: false,
            revert_unstoppable: false,
            revert_cuts_sessions: false,
            sessions: 0,
            lost_below: 0,
            armings: 0,
            rearmed_with: None,
            revert_records: BTreeMap::new(),
            baseline: None,
            boot_id: 1,
            sudo_password_required: false,
            failed_units: Default::default(),
            restarting_units: Default::default(),
            keys: BTreeMap::new(),
            failing_key: None,
            lose: Vec::new(),
            ran: Vec::new(),
            staged_roots: BTreeMap::new(),
            break_once: Vec::new(),
            profile_set_fails: false,
            moved_by_other: None,
            lock_fails: 0,
            lock_taken_after_refusal: false,
            refused_yet_runs: false,
            refusals_time_out: false,
            stops_fail: false,
        })))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("fake host state")
    }

    pub fn behave(&self, c: &StorePath, b: Behaviour) {
        self.state().behaviours.insert(c.clone(), b);
    }

    /// `c`'s `init` is incompatible with the running one (exit 100).
    pub fn init_incompatible(&self, c: &StorePath) {
        let b = Behaviour {
            init_incompatible: true,
            ..Default::default()
        };
        self.behave(c, b);
    }

    /// `c`'s switch is refused by NixOS's switch inhibitors (25.11+).
    pub fn inhibited(&self, c: &StorePath) {
        let b = Behaviour {
            inhibitor_message: true,
            ..Default::default()
        };
        self.behave(c, b);
    }

    pub fn remote(&self) -> ScriptedRemote {
        self.remote_named("web1")
    }

    /// The host's remote, under the name `name`.
    pub fn remote_named(&self, name: &str) -> ScriptedRemote {
        let st = self.0.clone();
        let session = {
            let mut st = self.state();
            st.sessions += 1;
            st.sessions - 1
        };
        ScriptedRemote::with_stdin(name, move |cmd, stdin| {
            let said = describe(cmd);
            let lost = {
                let mut st = st.lock().expect("state");
                if session < st.lost_below {
                    return Output::new(Exit::ConnectionLost, "", "");
                }
                st.ran.push(said.clone());
                if let Some(i) = st.break_once.iter().position(|c| *c == said) {
                    st.break_once.remove(i);
                    return fail(1, "readlink: /nix/store: No such file or directory");
                }
                let i = st.lose.iter().position(|(c, _)| *c == said);
                i.map(|i| st.lose.remove(i).1)
            };
            match lost {
                Some(false) => return Output::new(Exit::ConnectionLost, "", ""),
                Some(true) => {
                    let _ = FakeHost(st.clone()).answer(cmd, stdin);
                    return Output::new(Exit::ConnectionLost, "", "");
                }
                None => {}
            }
            FakeHost(st.clone()).answer(cmd, stdin)
        })
        .answering_at_once(|cmd| {
            cmd.argv()
                .get(2)
                .is_some_and(|s| s == super::host_lock::LINUX)
        })
    }

    fn answer(&self, cmd: &Command, stdin: Option<&[u8]>) -> Output {
        let st = &self.0;
        {
            let a = cmd.argv();
            if a[0] == "sh" && a.len() > 2 && a[2] == deadman::ARM_LINUX {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                return FakeHost(st.clone()).arm(&a, stdin.expect("the script on stdin"));
            }
            if a[0] == "sh" && a.len() > 19 && a[2] == switch::FIRE_LINUX && !a[16].is_empty() {
                return self.fire_arming(cmd, &a[16], &a[17], &a[19]);
            }
            st.lock().expect("state").respond(cmd, stdin)
        }
    }
}

/// A readable one-line description of a command for sequence assertions:
/// nixgate's fixed scripts by name, with their arguments; anything else as
/// rendered (so `sudo -n --` shows).
pub fn describe(cmd: &Command) -> String {
    let a = cmd.argv();
    let sudo = if cmd.is_sudo() { "sudo " } else { "" };
    if a[0] != "sh" || a.len() < 4 {
        return match cmd.limit() {
            Some(l) => format!("{} (within {}s)", cmd.unlimited().render(), l.as_secs()),
            None => cmd.render(),
        };
    }
    let name = match a[2].as_str() {
        s if s == links::READ_LINK => "readlink-f",
        s if s == links::READ_LINKS => "readlink-f",
        s if s == links::READ_START => "readlink-f",
        s if s == verify_poll::POLL_LINUX => "poll",
        s if s == switch::LOG_TAIL => "log-tail",
        s if s == inhibitors::COMPARE => "compare-components",
        s if s == known_good::MARK => {
            return format!("{sudo}mark-known-good {} {} {}", a[4], a[6], a[7]);
        }
        s if s == known_good::LIST => "list-known-good",
        s if s == deadman::ARM_LINUX => "arm-revert",
        // The units (the job dir, where their jobs are marked, aside).
        s if s == switch::STOP_LINUX => return format!("{sudo}stop-unit {}", a[5..].join(" ")),
        s if s == deadman::STOP_REVERT_LINUX => "stop-revert",
        s if s == deadman::DISARM_LINUX => "disarm-revert",
        s if s == deadman::READ_RECORD => "read-revert-record",
        s if s == known_good::REVOKE => "revoke-known-good",
        s if s == known_good::SOAKED => "soak-passed",
        s if s == crate::keys::upload::WRITE => "write-key",
        s if s == known_good::UNDO_MARK => {
            return format!("{sudo}undo-known-good {} {}", a[4], a[6]);
        }
        s if s == leftovers::LIST => "list-nixgate-units",
        s if s == leftovers::RUN_REVERT => "run-revert",
        s if s == crate::nix::gcroots::HOLD_STAGED => "hold-staged",
        s if s == switch::FIRE_LINUX => {
            let arms = if a[16].is_empty() {
                String::new()
            } else {
                format!(" (arm-revert {} {} first)", a[16], a[17])
            };
            let sets = if a[13].is_empty() {
                String::new()
            } else {
                format!(" (set {} first)", a[13])
            };
            return format!(
                "{sudo}fire {} {} {}{arms}{sets}",
                a[21],
                a[a.len() - 2],
                a[a.len() - 1]
            );
        }
        _ => "unknown-script",
    };
    format!("{sudo}{name} {}", a[4..].join(" "))
}

/// How MARK writes a pending soak into a record.
pub const SOAK_PENDING: &str = "\"soak_pending\":true,";

/// The record of the known-good generation a fake host starts with.
fn first_record(closure: &StorePath) -> String {
    let record = known_good::KnownGoodRecord {
        version: 1,
        host: "web1".into(),
        generation: 1,
        closure: closure.clone(),
        marked_at: "2026-01-01T00:00:00Z".into(),
        commit: None,
        run_id: crate::activation::RunId::parse("r0").expect("a run id"),
        gates: Vec::new(),
        replaced: None,
        created: None,
        lineage: None,
        soak_pending: false,
        marked_on_host: None,
        rolled_back_from: None,
    };
    serde_json::to_string(&record).expect("a record serializes")
}

/// The generation a known-good record says its mark replaced.
fn replaced_of(record: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(record).expect("a record");
    v["replaced"].as_u64().map(|g| g as usize)
}

/// What `switch-to-configuration` says before it exits 100.
fn init_incompatible_warning() -> Vec<String> {
    vec![
        "Warning: the new NixOS configuration has an ‘init’ that is".into(),
        "incompatible with the current configuration.  The new configuration".into(),
        "won't take effect until you reboot the system.".into(),
    ]
}
