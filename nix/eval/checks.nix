# What of the flake can be evaluated without nixpkgs, against the stub in
# ./nixpkgs (see ./README.md):
#
#   nix-instantiate --eval --strict --json nix/eval/checks.nix
#
# prints the names of the checks, each of which passed; the first that
# does not stops the evaluation with its name and what it found.
#
# - the flake's outputs, for every system: their names, the package
#   (evaluated down to its drvPath: its source set exists, its inputs are
#   there), the app, the overlay, the dev shell, the checks (module-eval runs
#   its own assertions here against the stub NixOS; the VM tests are
#   imported and called, their machines not evaluated);
# - the package refuses a rustc older than Cargo.toml's rust-version;
# - the module's options: names, types, defaults, each with a description
#   (the table below is its interface: change it with the module, on purpose);
# - the services, timers and users it makes for sample configurations, and
#   the rollout names it refuses.
let
  root = ../..;
  stub = import ./nixpkgs { };
  inherit (stub) lib;
  b = builtins;

  # The flake's outputs, `self` being them with the flake's outPath, as Nix
  # calls them.
  outputsWith =
    nixpkgs:
    let
      outputs = (import (root + "/flake.nix")).outputs { inherit self nixpkgs; };
      self = outputs // {
        outPath = toString root;
      };
    in
    outputs;
  flake = outputsWith stub;

  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];
  linux = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  cargoToml = b.fromTOML (b.readFile (root + "/Cargo.toml"));
  sourceList = b.filter (l: l != "" && !lib.hasPrefix "#" l) (
    lib.splitString "\n" (b.readFile (root + "/nix/package-files.txt"))
  );

  # `name` if `ok`, else an error with `found`.
  check =
    name: ok: found:
    if ok then name else throw "nix/eval/checks.nix: ${name}: ${found}";
  show = b.toJSON;
  # A check over each element of `xs`, named after it.
  each = name: xs: f: map (x: f "${name} (${x})" x) xs;
  succeeds = v: (b.tryEval (b.deepSeq v v)).success;

  # -- the flake's outputs

  flakeChecks = [
    (check "flake: output names" (
      b.attrNames flake == [
        "apps"
        "checks"
        "devShells"
        "nixosModules"
        "overlays"
        "packages"
      ]
    ) (show (b.attrNames flake)))
    (check "flake: nixosModules" (
      b.attrNames flake.nixosModules == [
        "default"
        "nixgate"
      ]
      && b.isFunction flake.nixosModules.nixgate
    ) (show (b.attrNames flake.nixosModules)))
  ]
  ++ each "flake: package" systems (
    name: system:
    let
      p = flake.packages.${system};
    in
    check name (
      b.attrNames p == [
        "default"
        "nixgate"
      ]
      && p.nixgate.name == "nixgate-${cargoToml.package.version}"
      && p.default.drvPath == p.nixgate.drvPath
      && p.nixgate.meta.mainProgram == "nixgate"
      && map toString p.nixgate.src.paths == map (path: "${toString root}/${path}") sourceList
      && p.nixgate.cargoLock.lockFile == root + "/Cargo.lock"
    ) (show {
      inherit (p.nixgate) name meta;
      src = map toString p.nixgate.src.paths;
    })
  )
  ++ each "flake: app" systems (
    name: system:
    let
      a = flake.apps.${system};
      exe = "${flake.packages.${system}.nixgate}/bin/nixgate";
    in
    check name (
      a.default.type == "app" && a.default.program == exe && a.nixgate == a.default
    ) (show a)
  )
  ++ each "flake: dev shell" systems (
    name: system: check name (succeeds flake.devShells.${system}.default.drvPath) "does not evaluate"
  )
  ++ each "flake: checks" systems (
    name: system:
    let
      c = flake.checks.${system};
      expected = [
        "package"
        "unit-tests"
      ]
      ++ lib.optionals (b.elem system linux) [
        "module-eval"
        "vm-check-offline"
        "vm-failing-unit"
        "vm-kernel-deferred"
        "vm-push"
        "vm-rollback"
      ];
    in
    check name (
      lib.all (n: b.elem n expected) (b.attrNames c)
      && b.length (b.attrNames c) == b.length expected
      && c.package.drvPath == flake.packages.${system}.nixgate.drvPath
      && c.unit-tests.doCheck
      && c.unit-tests.cargoTestFlags == [ "--lib" ]
      && succeeds c.unit-tests.drvPath
      # What the unit tests call: perl (source.rs's rename fallback) everywhere;
      # util-linux (flock, setsid) and procps (ps, pgrep, pkill) on Linux.
      && map (p: p.name) c.unit-tests.nativeCheckInputs
        == [
          "git"
          "openssh"
          "perl"
        ]
        ++ lib.optionals (b.elem system linux) [
          "util-linux"
          "procps"
        ]
      # module-eval's own assertions, against the stub NixOS.
      && (b.elem system linux -> c.module-eval.name == "nixgate-module-eval")
      && lib.all (n: c.${n}.type == "derivation") (b.attrNames c)
    ) (show (b.attrNames c))
  )
  ++ [
    (
      let
        pkgs = stub.legacyPackages.x86_64-linux;
        final = pkgs // flake.overlays.default final pkgs;
      in
      check "flake: overlay adds nixgate" (
        final.nixgate.name == "nixgate-${cargoToml.package.version}" && succeeds final.nixgate.drvPath
      ) (show (b.attrNames (flake.overlays.default final pkgs)))
    )
    (check "package: refuses rustc 1.86.0 (nixos-25.05), takes 1.89.0" (
      !(b.tryEval (outputsWith (import ./nixpkgs { rustcVersion = "1.86.0"; }))
        .packages.x86_64-linux.nixgate.drvPath
      ).success
      && succeeds flake.packages.x86_64-linux.nixgate.drvPath
    ) "the rustc check does not hold")
  ];

  # -- the module

  nixosWith =
    nixgate:
    lib.nixosSystem {
      system = "x86_64-linux";
      modules = [
        flake.nixosModules.default
        {
          boot.isContainer = true;
          system.stateVersion = "25.11";
          services.nixgate = nixgate;
        }
      ];
    };

  options = (nixosWith { }).options.services.nixgate;

  # [ { name = "a.b"; value = { type; default or defaultText }; } ] of an
  # option tree; a submodule's options below `<name>`.
  optionList =
    loc: tree:
    b.concatMap (
      name:
      let
        o = tree.${name};
        loc' = loc ++ [ name ];
        sub = o.type.getSubOptions loc';
        subLoc = loc' ++ lib.optional (o.type.name == "attrsOf") "<name>";
      in
      if lib.stubModules.isOption o then
        [
          {
            name = b.concatStringsSep "." loc';
            value = {
              type = o.type.expr;
              described = o ? description;
            }
            // (
              if o ? defaultText then
                { defaultText = o.defaultText.text; }
              else
                lib.optionalAttrs (o ? default) { inherit (o) default; }
            );
          }
        ]
        ++ optionList subLoc sub
      else
        optionList loc' o
    ) (b.attrNames tree);

  # services.nixgate.* as the module declares it: its interface.
  expectedOptions = {
    "enable" = {
      type = "bool";
      default = false;
    };
    "package" = {
      type = "package";
      defaultText = "pkgs.nixgate";
    };
    "user" = {
      type = "str";
      default = "nixgate";
    };
    "group" = {
      type = "str";
      default = "nixgate";
    };
    "sshAuthSock" = {
      type = "nullOr str";
      default = null;
    };
    "extraPackages" = {
      type = "listOf package";
      default = [ ];
    };
    "readWritePaths" = {
      type = "listOf str";
      default = [ ];
    };
    "rollouts" = {
      type = "attrsOf submodule";
      default = { };
    };
    "rollouts.<name>.inventory" = {
      type = "path";
    };
    "rollouts.<name>.selector" = {
      type = "nullOr (either str (listOf str))";
      default = null;
    };
    "rollouts.<name>.schedule" = {
      type = "str";
      default = "daily";
    };
    "rollouts.<name>.timeout" = {
      type = "str";
      default = "6h";
    };
    "rollouts.<name>.stopTimeout" = {
      type = "str";
      default = "15min";
    };
    "rollouts.<name>.randomizedDelaySec" = {
      type = "str";
      default = "0";
    };
    "rollouts.<name>.extraArgs" = {
      type = "listOf str";
      default = [ ];
    };
    "rollouts.<name>.htmlReport" = {
      type = "nullOr path";
      default = null;
    };
    "rollouts.<name>.metricsFile" = {
      type = "nullOr path";
      default = null;
    };
  };
  declared = b.listToAttrs (optionList [ ] options);

  exe = "${flake.packages.x86_64-linux.nixgate}/bin/nixgate";

  sample = nixosWith {
    enable = true;
    sshAuthSock = "/tmp/nixgate-agent.sock";
    readWritePaths = [
      "/srv/fleet-config"
      "-/srv/optional"
    ];
    rollouts.canary = {
      inventory = "/etc/nixgate/fleet.toml";
      selector = [
        "--tag"
        "web"
        "--wave"
        "canary"
      ];
      extraArgs = [
        "--goal"
        "gated"
      ];
    };
  };
  canary = sample.config.systemd.services.nixgate-rollout-canary;

  withOutputs = nixosWith {
    enable = true;
    extraPackages = [ stub.legacyPackages.x86_64-linux.pass ];
    readWritePaths = [ "/srv/fleet-config" ];
    rollouts.fleet = {
      inventory = "/etc/nixgate/fleet.toml";
      stopTimeout = "45min";
      htmlReport = "/var/lib/nixgate/fleet/report.html";
      metricsFile = "/var/lib/node-exporter/nixgate.prom";
      extraArgs = [
        "--keep"
        "30"
      ];
    };
  };
  fleetService = withOutputs.config.systemd.services.nixgate-rollout-fleet;

  withUser = nixosWith {
    enable = true;
    user = "alice";
    group = "users";
    sshAuthSock = "/var/tmp/agent.sock";
    rollouts.all.inventory = "/etc/nixgate/fleet.toml";
  };
  noAgent = nixosWith {
    enable = true;
    rollouts.all.inventory = "/etc/nixgate/fleet.toml";
  };
  tmpLookalike = nixosWith {
    enable = true;
    sshAuthSock = "/tmpfs/agent.sock";
    rollouts.all.inventory = "/etc/nixgate/fleet.toml";
  };
  disabled = nixosWith {
    enable = false;
    rollouts.all.inventory = "/etc/nixgate/fleet.toml";
  };

  withName =
    name:
    nixosWith {
      enable = true;
      rollouts.${name}.inventory = "/etc/nixgate/fleet.toml";
    };
  refused =
    name:
    let
      sys = withName name;
    in
    b.any (
      a: !a.assertion && lib.hasPrefix "services.nixgate.rollouts.${name}:" a.message
    ) sys.config.assertions
    && !(b.tryEval sys.config.system.build.toplevel.drvPath).success;

  moduleChecks = [
    (check "module: options (names, types, defaults)" (
      b.mapAttrs (_: o: b.removeAttrs o [ "described" ]) declared == expectedOptions
    ) "declared ${show declared}, expected ${show expectedOptions}")
    (check "module: every option has a description" (lib.all (o: o.described) (b.attrValues declared)) (
      show declared
    ))
    (check "module: the service's command line" (
      canary.script == "exec ${exe} --inventory /etc/nixgate/fleet.toml --state-dir /var/lib/nixgate/canary push --yes --goal gated --tag web --wave canary\n"
    ) canary.script)
    (check "module: the service" (
      canary.description == "nixgate rollout canary"
      && canary.after == [ "network-online.target" ]
      && canary.wants == [ "network-online.target" ]
      && canary.wantedBy == [ ]
      && !canary.restartIfChanged
      && map (p: p.name) canary.path == [
        "git"
        "openssh"
        "bash"
        "gnutar"
      ]
      && canary.serviceConfig.Type == "oneshot"
      && canary.serviceConfig.User == "nixgate"
      && canary.serviceConfig.Group == "nixgate"
      && canary.serviceConfig.StateDirectory == [
        "nixgate"
        "nixgate/canary"
      ]
      && canary.serviceConfig.WorkingDirectory == "/var/lib/nixgate/canary"
      && canary.serviceConfig.ProtectSystem == "strict"
      && canary.serviceConfig.ProtectHome == "read-only"
    ) (show (b.removeAttrs canary [ "path" ])))
    # RuntimeMaxSec= has no effect on a oneshot (systemd.service(5)): the
    # bound of its run is TimeoutStartSec=.
    (check "module: a rollout's run is bounded (TimeoutStartSec, not RuntimeMaxSec: oneshot), 6h by default" (
      canary.serviceConfig.TimeoutStartSec or null == "6h" && !(canary.serviceConfig ? RuntimeMaxSec)
    ) (show canary.serviceConfig))
    # Commands the inventory names (sudo_password_command, key sources,
    # [notify]) are looked up on the service's PATH.
    (check "module: extraPackages go on the service's path, after the fixed ones" (
      map (p: p.name) fleetService.path == [
        "git"
        "openssh"
        "bash"
        "gnutar"
        "pass"
      ]
    ) (show (map (p: p.name) fleetService.path)))
    # A stop's SIGTERM lets the hosts in flight finish: its bound is the
    # rollout's stopTimeout, and it reaches nixgate alone (KillMode=mixed:
    # the default control-group would kill the commands it waits for).
    (check "module: a stopped run finishes within stopTimeout (15min by default), SIGTERM to nixgate only" (
      canary.serviceConfig.TimeoutStopSec == "15min"
      && canary.serviceConfig.KillMode or null == "mixed"
      && fleetService.serviceConfig.TimeoutStopSec == "45min"
    ) (show canary.serviceConfig))
    (check "module: readWritePaths get systemd's `-` (a missing path is skipped, not 226/NAMESPACE)" (
      canary.serviceConfig.ReadWritePaths == [
        "-/srv/fleet-config"
        "-/srv/optional"
      ]
    ) (show canary.serviceConfig.ReadWritePaths))
    (check "module: an agent socket under /tmp or /var/tmp turns PrivateTmp off" (
      canary.environment == { SSH_AUTH_SOCK = "/tmp/nixgate-agent.sock"; }
      && !canary.serviceConfig.PrivateTmp
      && !withUser.config.systemd.services.nixgate-rollout-all.serviceConfig.PrivateTmp
    ) (show canary.serviceConfig))
    (check "module: PrivateTmp stays without an agent socket, or with one elsewhere" (
      noAgent.config.systemd.services.nixgate-rollout-all.environment == { }
      && noAgent.config.systemd.services.nixgate-rollout-all.serviceConfig.PrivateTmp
      && tmpLookalike.config.systemd.services.nixgate-rollout-all.serviceConfig.PrivateTmp
    ) "PrivateTmp off")
    (check "module: the HTML report and metrics file are passed to push, their directories writable" (
      fleetService.script == "exec ${exe} --inventory /etc/nixgate/fleet.toml --state-dir /var/lib/nixgate/fleet push --yes --html-report /var/lib/nixgate/fleet/report.html --metrics-file /var/lib/node-exporter/nixgate.prom --keep 30\n"
      && fleetService.serviceConfig.ReadWritePaths == [
        "-/srv/fleet-config"
        "-/var/lib/nixgate/fleet"
        "-/var/lib/node-exporter"
      ]
    ) (show fleetService))
    (check "module: a relative metrics file is refused (types.path)" (
      !(b.tryEval
        (nixosWith {
          enable = true;
          rollouts.all = {
            inventory = "/etc/fleet.toml";
            metricsFile = "nixgate.prom";
          };
        }).config.systemd.services.nixgate-rollout-all.script
      ).success
    ) "accepted")
    (check "module: the timer" (
      sample.config.systemd.timers.nixgate-rollout-canary == {
        description = "Schedule of the nixgate rollout canary";
        after = [ ];
        wants = [ ];
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = "daily";
          Persistent = true;
          RandomizedDelaySec = "0";
          Unit = "nixgate-rollout-canary.service";
        };
      }
    ) (show sample.config.systemd.timers))
    (check "module: the nixgate user and group, the package installed" (
      sample.config.users.users.nixgate == {
        isSystemUser = true;
        group = "nixgate";
        home = "/var/lib/nixgate";
        createHome = true;
        description = "nixgate controller";
      }
      && b.attrNames sample.config.users.groups == [ "nixgate" ]
      && map (p: p.name) sample.config.environment.systemPackages == [ "nixgate-0.1.0" ]
    ) (show sample.config.users))
    (check "module: another user: no user or group made, the service runs as it" (
      withUser.config.users.users == { }
      && withUser.config.users.groups == { }
      && withUser.config.systemd.services.nixgate-rollout-all.serviceConfig.User == "alice"
      && withUser.config.systemd.services.nixgate-rollout-all.serviceConfig.Group == "users"
    ) (show withUser.config.users))
    (check "module: disabled, it makes nothing" (
      disabled.config.systemd.services == { }
      && disabled.config.systemd.timers == { }
      && disabled.config.users.users == { }
      && disabled.config.environment.systemPackages == [ ]
    ) (show disabled.config.systemd))
    (check "module: a relative inventory is refused (types.path)" (
      !(b.tryEval
        (nixosWith {
          enable = true;
          rollouts.all.inventory = "etc/fleet.toml";
        }).config.systemd.services.nixgate-rollout-all.script
      ).success
    ) "accepted")
    (check "module: a sample system evaluates (system.build.toplevel)" (succeeds
      sample.config.system.build.toplevel.drvPath
    ) "does not evaluate")
  ]
  ++ each "module: a good rollout name is taken" [ "web" "a.b_c-1" "0x" ] (
    name: rollout:
    check name (succeeds (withName rollout).config.system.build.toplevel.drvPath) "refused"
  )
  ++ each "module: a bad rollout name is refused" [ "../escape" "-x" ".x" "a b" "a..b" "a/b" "" ] (
    name: rollout: check name (refused rollout) "accepted"
  );
in
flakeChecks ++ moduleChecks
