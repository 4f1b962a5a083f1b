# NixOS module for a nixgate controller: scheduled rollouts.
#
# Every `services.nixgate.rollouts.<name>` becomes a oneshot service
# `nixgate-rollout-<name>.service` and a timer of the same name that runs
#
#   nixgate --inventory <inventory> --state-dir /var/lib/nixgate/<name> \
#     push --yes [--html-report <htmlReport>] [--metrics-file <metricsFile>] \
#     <extraArgs...> <selector...>
#
# as the `nixgate` user (or `services.nixgate.user`): no prompt, plain
# timestamped lines on stdout/stderr (not a terminal), so into the journal;
# exit 1 (a host failed or was rolled back), 2 (usage or inventory) or 3
# (another run holds the lock) fail the unit.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.nixgate;

  stateRoot = "/var/lib/nixgate";

  # PrivateTmp=true gives the service its own empty /tmp and /var/tmp: an
  # agent socket there (where ssh-agent puts its own) would not be found.
  agentInTmp =
    cfg.sshAuthSock != null
    && (lib.hasPrefix "/tmp/" cfg.sshAuthSock || lib.hasPrefix "/var/tmp/" cfg.sshAuthSock);

  # systemd's `-` prefix: a path that does not exist is skipped. Without it
  # the unit fails before nixgate starts (226/NAMESPACE), saying nothing of
  # which path; nixgate then says what it could not write, when it has to.
  readWritePaths = map (p: if lib.hasPrefix "-" p then p else "-${p}") cfg.readWritePaths;

  rolloutModule =
    { name, ... }:
    {
      options = {
        inventory = mkOption {
          type = types.path;
          example = "/etc/nixgate/inventory.toml";
          description = ''
            The inventory file (TOML) of this rollout, on the controller. Give an
            absolute path as a string to use the file in place: the paths the
            inventory names relative to itself (`builder.source`, `known_hosts`,
            `identity_file`) then resolve next to it. A Nix path literal
            (`./inventory.toml`) is copied into the Nix store, so relative paths
            in it would resolve inside the store: use absolute ones there.
          '';
        };

        selector = mkOption {
          type = types.nullOr (types.either types.str (types.listOf types.str));
          default = null;
          example = literalExpression ''[ "--tag" "web" "--wave" "canary" ]'';
          description = ''
            Which hosts the rollout deploys, as nixgate's selector arguments. A
            string is one argument: a host name (`"web1"`), or an option with its
            value (`"--tag=web"`, `"--wave=canary"`); a list is several
            (`[ "--tag" "web" "--tag" "db" ]`). `null`: the whole fleet, wave
            by wave, in inventory order.
          '';
        };

        schedule = mkOption {
          type = types.str;
          default = "daily";
          example = "Mon..Fri *-*-* 03:00:00";
          description = ''
            When the rollout runs: a systemd calendar event (`OnCalendar=` of the
            timer, see {manpage}`systemd.time(7)`). The timer is persistent: a
            run missed while the controller was off happens at the next boot.
          '';
        };

        timeout = mkOption {
          type = types.str;
          default = "6h";
          example = "90min";
          description = ''
            The longest one run may take (`TimeoutStartSec=` of the service: a
            oneshot service's run is its start, and systemd ignores
            `RuntimeMaxSec=` for oneshot services): a run still going then is
            stopped like a Ctrl-C (SIGTERM: nothing new starts, hosts in flight
            finish and are verified; see `TimeoutStopSec`), so a rollout stuck
            on a host does not block the next scheduled one forever. Every
            remote step of nixgate has its own bound; this is the last one.
          '';
        };

        stopTimeout = mkOption {
          type = types.str;
          default = "15min";
          example = "45min";
          description = ''
            How long a stopped run may take to finish (`TimeoutStopSec=` of the
            service) before systemd kills it and everything it started
            (SIGKILL). A stop (`systemctl stop`, the `timeout` running out,
            shutdown) sends nixgate SIGTERM: nothing new starts and the hosts
            in flight finish their gates, each bounded by the inventory's
            `activation_timeout`; a `--reboot` host, or one whose failure is
            then rolled back, can need longer than the default. Only nixgate
            gets the SIGTERM (`KillMode=mixed`): the git, tar, ssh and notify
            commands it runs for those hosts are left to finish.
          '';
        };

        randomizedDelaySec = mkOption {
          type = types.str;
          default = "0";
          example = "15min";
          description = ''
            Delay each run by a random time up to this long (`RandomizedDelaySec=`
            of the timer), e.g. so that several controllers do not start at once.
          '';
        };

        htmlReport = mkOption {
          type = types.nullOr types.path;
          default = null;
          example = "/var/lib/nixgate/fleet/report.html";
          description = ''
            Write each run's report as one self-contained HTML file here when
            the run ends (`--html-report`): a timeline of every host's gates,
            the summary, the diffs, every gate's evidence. An absolute path, as
            a string; its directory is made writable for the service (it is
            under the state directory `/var/lib/nixgate/<name>` if you like).
            `null`: none (`nixgate report --html` writes one for any past run).
          '';
        };

        metricsFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          example = "/var/lib/prometheus-node-exporter-text-files/nixgate-fleet.prom";
          description = ''
            Replace this file, atomically, with Prometheus metrics when each run
            ends (`--metrics-file`), for node_exporter's textfile collector: each
            host's last outcome, whether it runs its known-good, a pending
            reboot, its known-good's generation and time, gate durations; the
            run's duration and exit code. An absolute path ending in `.prom`, as
            a string, in the collector's directory (which the rollout's user must
            be able to write; it is made writable for the service). The file is
            made readable by all. `null`: none.
          '';
        };

        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "--expect"
            "nginx,openssl"
            "--reboot"
          ];
          description = ''
            More arguments for `nixgate push`, placed after `push --yes` and
            before the selector: `--goal`, `--expect`, `--reboot`,
            `--allow-dirty`, global options such as `--accept-new` or `-v`.
          '';
        };
      };
    };

  # The directories the rollout's HTML report and metrics file go to.
  outputDirs =
    rollout:
    map (p: "-${dirOf (toString p)}") (
      lib.filter (p: p != null) [
        rollout.htmlReport
        rollout.metricsFile
      ]
    );

  # `nixgate ... push --yes [--html-report F] [--metrics-file F] <extraArgs> <selector>`, one argv.
  rolloutArgs =
    name: rollout:
    [
      "--inventory"
      "${rollout.inventory}"
      "--state-dir"
      "${stateRoot}/${name}"
      "push"
      "--yes"
    ]
    ++ lib.optionals (rollout.htmlReport != null) [
      "--html-report"
      "${toString rollout.htmlReport}"
    ]
    ++ lib.optionals (rollout.metricsFile != null) [
      "--metrics-file"
      "${toString rollout.metricsFile}"
    ]
    ++ rollout.extraArgs
    ++ lib.optionals (rollout.selector != null) (lib.toList rollout.selector);

  mkService =
    name: rollout:
    lib.nameValuePair "nixgate-rollout-${name}" {
      description = "nixgate rollout ${name}";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # git ships the configuration's HEAD to the builder and writes release
      # tags; ssh for a `[release] remote` reached over SSH; sh and tar for
      # `--allow-dirty`.
      # Then the commands the inventory names (extraPackages).
      path = [
        pkgs.git
        pkgs.openssh
        pkgs.bash
        pkgs.gnutar
      ]
      ++ cfg.extraPackages;
      environment = lib.optionalAttrs (cfg.sshAuthSock != null) {
        SSH_AUTH_SOCK = cfg.sshAuthSock;
      };
      # A `nixos-rebuild switch` of the controller must not restart (or
      # stop) a rollout that is running.
      restartIfChanged = false;
      script = ''
        exec ${lib.getExe' cfg.package "nixgate"} ${lib.escapeShellArgs (rolloutArgs name rollout)}
      '';
      serviceConfig = {
        Type = "oneshot";
        User = cfg.user;
        Group = cfg.group;
        StateDirectory = [
          "nixgate"
          "nixgate/${name}"
        ];
        StateDirectoryMode = "0750";
        WorkingDirectory = "${stateRoot}/${name}";
        UMask = "0077";
        # SIGTERM: nixgate starts nothing new and finishes the hosts in flight
        # (their activation is bounded by the inventory's activation_timeout).
        TimeoutStopSec = rollout.stopTimeout;
        # The SIGTERM to nixgate alone: the default (control-group) sends it to
        # every process of the unit, so the git, tar, ssh and notify commands
        # nixgate runs for the hosts it is finishing were killed under it.
        # The SIGKILL at the end of TimeoutStopSec still reaches them all.
        KillMode = "mixed";
        # A oneshot's run is its start: systemd.service(5) says RuntimeMaxSec=
        # has no effect on Type=oneshot (a stuck rollout would run forever and
        # every later firing of its timer would find it still running).
        TimeoutStartSec = rollout.timeout;

        # Hardening. Writable: the state directory, and readWritePaths.
        ReadWritePaths = readWritePaths ++ outputDirs rollout;
        ProtectSystem = "strict";
        # Read-only rather than hidden: the user's SSH keys may live there
        # (and an agent socket in /run/user still connects: a socket on a
        # read-only mount can be connected to).
        ProtectHome = "read-only";
        PrivateTmp = !agentInTmp;
        PrivateDevices = true;
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };

  mkTimer =
    name: rollout:
    lib.nameValuePair "nixgate-rollout-${name}" {
      description = "Schedule of the nixgate rollout ${name}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = rollout.schedule;
        Persistent = true;
        RandomizedDelaySec = rollout.randomizedDelaySec;
        Unit = "nixgate-rollout-${name}.service";
      };
    };
in
{
  options.services.nixgate = {
    enable = mkEnableOption "nixgate on this controller: the nixgate command and scheduled rollouts";

    package = mkOption {
      type = types.package;
      default = pkgs.nixgate;
      defaultText = literalExpression "pkgs.nixgate";
      description = ''
        The nixgate package. The flake's `nixosModules.nixgate` sets it to the
        flake's own package; with this file alone, use the flake's
        `overlays.default` (which adds `pkgs.nixgate`) or set it.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "nixgate";
      description = ''
        The user the rollouts run as. nixgate authenticates with its SSH agent
        (`sshAuthSock`) or the identity files the inventory names, and reads
        `~/.ssh/config`; so a user with a home, not a DynamicUser. When left at
        `"nixgate"`, the module creates this system user, with the home
        `/var/lib/nixgate` (keep its key and known_hosts in `~/.ssh` there).
      '';
    };

    group = mkOption {
      type = types.str;
      default = "nixgate";
      description = ''
        The group the rollouts run as. When left at `"nixgate"`, the module
        creates it.
      '';
    };

    sshAuthSock = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/nixgate-agent/ssh-agent.sock";
      description = ''
        An ssh-agent socket for the rollouts (`SSH_AUTH_SOCK`): its keys that
        are the inventory's identity files are offered first, its others
        after those files. `null`: no agent, identity files only.
        A socket under `/tmp` or `/var/tmp` turns the services' `PrivateTmp`
        off (a private /tmp would hide it); elsewhere, e.g. under `/run`,
        keeps it.
      '';
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.pass pkgs.curl ]";
      description = ''
        Packages whose programs the rollout services need on their `PATH`,
        after the ones they always have (git, openssh, bash, gnutar): every
        command the inventory names by a bare name is looked up there, e.g.
        a `sudo_password_command` (`[ "pass" "show" "fleet/sudo" ]`), a key's
        `command` source, a `[notify]` command. A systemd service does not
        see the system's or a user's profile, so a command found in a shell
        fails in the rollout without this.
      '';
    };

    readWritePaths = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/srv/fleet-config" ];
      description = ''
        Paths the rollout services may write besides `/var/lib/nixgate`: the
        rest of the file system is read-only to them (`ProtectSystem=strict`,
        `ProtectHome=read-only`). Add the configuration repository when it
        lives elsewhere (nixgate writes release tags into it), and a
        `known_hosts` file outside `/var/lib/nixgate` that `--accept-new`
        should learn into. A path that does not exist is skipped (systemd's
        `-` prefix is added) instead of failing the unit with 226/NAMESPACE.
      '';
    };

    rollouts = mkOption {
      type = types.attrsOf (types.submodule rolloutModule);
      default = { };
      example = literalExpression ''
        {
          canary = {
            inventory = "/etc/nixgate/inventory.toml";
            selector = "--wave=canary";
            schedule = "*-*-* 02:00:00";
          };
          fleet = {
            inventory = "/etc/nixgate/inventory.toml";
            schedule = "Mon..Fri *-*-* 03:00:00";
            randomizedDelaySec = "10min";
            extraArgs = [ "--reboot" ];
          };
        }
      '';
      description = ''
        Scheduled rollouts. Each `<name>` gets the service
        `nixgate-rollout-<name>.service` (a oneshot running `nixgate push
        --yes` with the state directory `/var/lib/nixgate/<name>`; start it by
        hand to roll out now, read it with `journalctl -u`) and the timer
        `nixgate-rollout-<name>.timer`. Names are used in unit names and
        paths: letters, digits, `_`, `.` and `-`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = lib.mapAttrsToList (name: _: {
      assertion =
        builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" name != null && !(lib.hasInfix ".." name);
      message = "services.nixgate.rollouts.${name}: a rollout name is letters, digits, `_`, `.` and `-`, starting with a letter or digit, without `..`.";
    }) cfg.rollouts;

    environment.systemPackages = [ cfg.package ];

    users.users = mkIf (cfg.user == "nixgate") {
      nixgate = {
        isSystemUser = true;
        group = cfg.group;
        home = stateRoot;
        createHome = true;
        description = "nixgate controller";
      };
    };

    users.groups = mkIf (cfg.group == "nixgate") { nixgate = { }; };

    systemd.services = lib.mapAttrs' mkService cfg.rollouts;

    systemd.timers = lib.mapAttrs' mkTimer cfg.rollouts;
  };
}
