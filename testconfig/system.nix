# One host's system closure: packages, system-path, etc, units, toplevel.
{ system, name, cfg }:
let
  sh = script: env: derivation ({
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  } // env);

  # Package catalogue: name -> runtime dependencies (by name).
  catalogue = {
    glibc = [ ];
    zlib = [ "glibc" ];
    openssl = [ "glibc" "zlib" ];
    pcre2 = [ "glibc" ];
    nginx = [ "glibc" "openssl" "zlib" "pcre2" ];
    hello = [ "glibc" ];
    curl = [ "glibc" "openssl" "zlib" ];
    bash = [ "glibc" ];
    coreutils = [ "glibc" "libcap" ];
    expat = [ "glibc" ];
    libcap = [ "glibc" ];
    util-linux = [ "glibc" "libcap" ];
    kmod = [ "glibc" "zlib" ];
    systemd = [ "glibc" "libcap" "util-linux" "kmod" "openssl" ];
    dbus = [ "glibc" "expat" "systemd" ];
  };

  versionOverrides = {
    systemd = cfg.systemdVersion;
    dbus = cfg.dbusVersion;
  };

  pkgSpec = pname:
    let s = cfg.packages.${pname} or { };
    in {
      version = versionOverrides.${pname} or (s.version or "1.0");
      flags = s.flags or "";
    };

  mkPkgScript = ''
    set -e
    mkdir -p "$out/bin" "$out/lib" "$out/nix-support" "$out/share/doc/$pname"
    libpath=""
    for d in $deps; do libpath="$libpath''${libpath:+:}$d/lib"; echo "$d" >> "$out/nix-support/runtime-deps"; done
    cat > "$out/bin/$pname" <<SCRIPT
    #!/bin/sh
    # $pname $version built with: $configureFlags
    LD_LIBRARY_PATH="$libpath"
    export PATH="/usr/bin:/bin:\$PATH"
    if [ "\$1" = --serve ]; then
      echo "$pname $version serving"
      while :; do sleep 3600; done
    fi
    if [ "\$1" = --version ]; then echo "$pname $version"; exit 0; fi
    echo "$greeting"
    SCRIPT
    chmod 555 "$out/bin/$pname"
    echo "$pname $version $configureFlags" > "$out/lib/lib$pname.so.txt"
    echo "$configureFlags" > "$out/share/doc/$pname/configure-flags"
  '';

  # Packages are built lazily, so a name only in `catalogue` costs nothing unless used.
  pkgs = builtins.mapAttrs
    (pname: depNames:
      let s = pkgSpec pname; in
      sh mkPkgScript {
        name = "${pname}-${s.version}";
        inherit pname;
        inherit (s) version;
        configureFlags = s.flags;
        greeting = if pname == "hello" then "Hello, world!" else "${pname} ${s.version}";
        deps = map (d: pkgs.${d}) depNames;
      })
    (catalogue // builtins.listToAttrs (map (n: { name = n; value = [ "glibc" ]; })
      (builtins.filter (n: !(catalogue ? ${n})) cfg.extraPackages)))
    // {
      systemd = let s = pkgSpec "systemd"; in sh ''
        set -e
        ${mkPkgScript}
        mkdir -p "$out/lib/systemd"
        printf '#!/bin/sh\necho "systemd %s"\n' "$version" > "$out/lib/systemd/systemd"
        chmod 555 "$out/lib/systemd/systemd"
      '' {
        name = "systemd-${s.version}";
        pname = "systemd";
        inherit (s) version;
        configureFlags = s.flags;
        greeting = "systemd ${s.version}";
        deps = map (d: pkgs.${d}) catalogue.systemd;
      };
      dbus = let s = pkgSpec "dbus"; in sh ''
        set -e
        ${mkPkgScript}
        mkdir -p "$out/lib/systemd/system"
        printf '[Unit]\nDescription=D-Bus System Message Bus\n[Service]\nExecStart=%s/bin/dbus --serve\n' "$out" \
          > "$out/lib/systemd/system/dbus.service"
      '' {
        name = "dbus-${s.version}";
        pname = "dbus";
        inherit (s) version;
        configureFlags = s.flags;
        greeting = "dbus ${s.version}";
        deps = map (d: pkgs.${d}) catalogue.dbus;
      };
    };

  linux = sh ''
    set -e
    mkdir -p "$out/lib/modules/$version"
    printf 'Linux kernel image %s\n' "$version" > "$out/bzImage"
    printf 'modules for %s\n' "$version" > "$out/lib/modules/$version/modules.dep"
  '' { name = "linux-${cfg.kernelVersion}"; version = cfg.kernelVersion; };

  initrd = sh ''
    set -e
    mkdir -p "$out"
    printf 'initrd for %s\n' "$kernel" > "$out/initrd"
  '' { name = "initrd-linux-${cfg.kernelVersion}"; kernel = linux; };

  filler = builtins.genList
    (i: sh ''
      set -e
      mkdir -p "$out/share"
      head -c "$((sizeKiB * 1024))" /dev/urandom > "$out/share/blob"
    '' ({ name = "filler-${toString i}-1.0"; sizeKiB = toString cfg.filler.sizeKiB; }
      # A salt gives a fresh set of filler paths (benchmarks copy anew).
      // (if cfg.filler ? salt then { salt = cfg.filler.salt; } else { })))
    cfg.filler.count;

  selected = map (n: pkgs.${n}) (cfg.systemPackages ++ cfg.extraPackages);

  systemPath = sh ''
    set -e
    mkdir -p "$out/bin" "$out/lib/systemd" "$out/share"
    for p in $paths; do
      for f in "$p"/bin/*; do [ -e "$f" ] && ln -sfn "$f" "$out/bin/$(basename "$f")"; done
    done
    ln -s "$systemd/lib/systemd/systemd" "$out/lib/systemd/systemd"
    for f in $filler; do echo "$f" >> "$out/share/filler"; done
    touch "$out/share/filler"
  '' {
    name = "system-path";
    paths = selected ++ [ pkgs.systemd pkgs.dbus ];
    systemd = pkgs.systemd;
    inherit filler;
  };

  units = map
    (svc: sh ''
      set -e
      mkdir -p "$out"
      printf '[Unit]\nDescription=nixgate test service %s\n\n[Service]\nExecStart=%s/bin/%s --serve\n' \
        "$svc" "$pkg" "$svc" > "$out/$unitName"
    '' {
      name = "unit-nixgate-test-${svc}.service";
      unitName = "nixgate-test-${svc}.service";
      inherit svc;
      pkg = pkgs.${svc};
    })
    cfg.services;

  etc = sh ''
    set -e
    mkdir -p "$out/etc/systemd/system"
    echo "$hostName" > "$out/etc/hostname"
    printf 'NAME=NixOS\nID=nixos\nVERSION_ID="%s"\nPRETTY_NAME="NixOS %s"\n' "$nixosVersion" "$nixosVersion" > "$out/etc/os-release"
    echo "$generation" > "$out/etc/nixgate-generation"
    ln -s "$dbus/lib/systemd/system/dbus.service" "$out/etc/systemd/system/dbus.service"
    for u in $units; do
      for f in "$u"/*; do ln -s "$f" "$out/etc/systemd/system/$(basename "$f")"; done
    done
  '' {
    name = "etc";
    hostName = name;
    inherit (cfg) nixosVersion;
    generation = toString cfg.generation;
    dbus = pkgs.dbus;
    inherit units;
  };

  # `brokenBuild`: the toplevel's builder fails (a configuration that does
  # not build). Only set when true, so every other toplevel keeps its hash.
  # `buildSeconds`: the toplevel's builder sleeps first (a build to cancel).
  broken = (if cfg.brokenBuild or false then ''
    echo "testconfig: this host's configuration is broken on purpose (brokenBuild)" >&2
    exit 1
  '' else "") + (if (cfg.buildSeconds or 0) > 0 then ''
    sleep ${toString cfg.buildSeconds} # testconfig-slow-build
  '' else "");

  toplevel = sh (broken + ''
    set -e
    mkdir -p "$out/bin"
    ln -s "$systemd" "$out/systemd"
    ln -s "$systemPath" "$out/sw"
    ln -s "$linux/bzImage" "$out/kernel"
    ln -s "$initrd/initrd" "$out/initrd"
    ln -s "$etc/etc" "$out/etc"
    echo "$nixosVersion" > "$out/nixos-version"
    echo "init=$out/init loglevel=4" > "$out/kernel-params"
    echo "$system" > "$out/system"
    printf '#!/bin/sh\nexec %s/lib/systemd/systemd "$@"\n' "$systemd" > "$out/init"
    chmod 555 "$out/init"
    printf '%s' "$switchScript" | sed \
      -e "s|@out@|$out|g" \
      -e "s|@misbehaviour@|$misbehaviour|g" \
      -e "s|@slowSeconds@|$slowSeconds|g" \
      -e "s|@otherPath@|$systemd|g" \
      -e "s|@swPath@|$systemPath|g" \
      > "$out/bin/switch-to-configuration"
    chmod 555 "$out/bin/switch-to-configuration"
  '') {
    name = "nixos-system-${name}-${cfg.nixosVersion}";
    systemd = pkgs.systemd;
    inherit systemPath linux initrd etc;
    inherit (cfg) nixosVersion misbehaviour;
    slowSeconds = toString cfg.slowSeconds;
    switchScript = builtins.readFile ./switch-to-configuration.sh;
  };
in
toplevel
