# nixgate, built with rustPlatform.buildRustPackage from Cargo.lock.
#
#   pkgs.callPackage ./nix/package.nix { }
#
# The unit tests do not run here (doCheck = false): the flake's
# `checks.<system>.unit-tests` turns them on. They run as `cargo test --lib`
# (cargoTestFlags): the library's unit tests only, not tests/ (those start a
# local fleet of sshd hosts and nspawn containers and need root); and the few
# unit tests that need a real Nix store or daemon (`nix-store --add`,
# `nix-build`), which the build sandbox does not have, are skipped by name
# (checkFlags).
#
# The source set is nix/package-files.txt, which `scripts/check-nix package`
# builds from with cargo on every CI run. The rustc must be at least
# Cargo.toml's rust-version (1.89: nixos-25.11 or newer); an older one stops
# the evaluation with a message saying so, rather than a build failing in a
# dependency's compile errors.
{
  lib,
  stdenv,
  rustPlatform,
  pkg-config,
  zlib,
  libiconv,
  git,
  openssh,
  util-linux,
  perl,
  procps,
  rustc,
}:
let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);

  # Unit tests that call `nix-store --add` / `nix-build` on the machine they
  # run on; the local fleet tests (scripts/test) cover them.
  needNixStore = [
    "activation::known_good::tests::real_profile_history"
    "activation::profile::tests::real_nix_env_profile"
    "activation::realise::tests::real_nix_store_verify"
    "activation::verify_poll::tests::real_detached_job_is_polled_to_the_end"
  ];
  # flock(1) is util-linux's: Linux only.
  needFlock = [ "activation::switch::tests::lock_check_real_flock" ];
  skipped = needNixStore ++ lib.optionals (!stdenv.hostPlatform.isLinux) needFlock;

  # nix/package-files.txt: one path per line, `#` comment lines.
  sourcePaths = builtins.filter (line: line != "" && !lib.hasPrefix "#" line) (
    lib.splitString "\n" (builtins.readFile ./package-files.txt)
  );

  minRust = cargoToml.package.rust-version;
in
if lib.versionOlder rustc.version minRust then
  throw ''
    nixgate ${cargoToml.package.version} needs rustc >= ${minRust} (Cargo.toml's rust-version,
    edition 2024); this nixpkgs has rustc ${rustc.version}. Use nixos-25.11 or newer
    (or nixos-unstable), or call nix/package.nix with a newer `rustPlatform` and `rustc`.''
else
rustPlatform.buildRustPackage {
  pname = "nixgate";
  inherit (cargoToml.package) version;

  # Only what cargo needs (nix/package-files.txt): a change to the README,
  # the tests/ fleet or the Nix files does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions (map (path: ../. + "/${path}") sourcePaths);
  };

  cargoLock.lockFile = ../Cargo.lock;

  # libgit2 is vendored (built by the git2 crate with cc); it links zlib.
  nativeBuildInputs = [ pkg-config ];
  buildInputs = [ zlib ] ++ lib.optionals stdenv.hostPlatform.isDarwin [ libiconv ];

  # See the header: the checks turn this on.
  doCheck = false;
  cargoTestFlags = [ "--lib" ];
  checkFlags = map (t: "--skip=${t}") skipped;
  # ssh-keygen (known_hosts tests), git; perl (the source extraction's
  # rename when mv has no -T, as on macOS: src/nix/source.rs); flock and
  # setsid (util-linux) and ps, pgrep, pkill (procps: the leftover and fire
  # scripts' tests) on Linux, where the sandbox has none of them. nixpkgs'
  # procps builds only `watch` on Darwin: its ps is the system's.
  nativeCheckInputs = [
    git
    openssh
    perl
  ]
  ++ lib.optionals stdenv.hostPlatform.isLinux [
    util-linux
    procps
  ];
  preCheck = ''
    export HOME=$(mktemp -d)
  '';
  # Some unit tests talk to servers they start on 127.0.0.1.
  __darwinAllowLocalNetworking = true;

  meta = {
    description = cargoToml.package.description;
    mainProgram = "nixgate";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
