# A stub of nixpkgs' `lib`: only the functions flake.nix, nix/*.nix and
# vm-tests/ call, written from their documented behaviour (not copied). See
# nix/eval/README.md for what it is and is not.
#
# `nixosSystem` is given by ./default.nix (it needs the stub packages).
let
  b = builtins;

  lib = rec {
    # -- trivial
    id = x: x;
    trivial = {
      inherit id;
      # nixpkgs: the release ("25.11"); a string here all the same.
      release = "stub";
    };

    # -- lists
    inherit (b)
      all
      any
      filter
      concatMap
      attrValues
      elem
      ;
    optionals = cond: xs: if cond then xs else [ ];
    optional = cond: x: if cond then [ x ] else [ ];
    toList = x: if b.isList x then x else [ x ];
    last = xs: b.elemAt xs (b.length xs - 1);
    imap0 = f: xs: b.genList (i: f i (b.elemAt xs i)) (b.length xs);
    unique = b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ];
    concatMapStrings = f: xs: b.concatStringsSep "" (map f xs);

    # -- attribute sets
    nameValuePair = name: value: { inherit name value; };
    genAttrs = names: f: b.listToAttrs (map (n: nameValuePair n (f n)) names);
    mapAttrs' = f: set: b.listToAttrs (map (n: f n set.${n}) (b.attrNames set));
    mapAttrsToList = f: set: map (n: f n set.${n}) (b.attrNames set);
    optionalAttrs = cond: set: if cond then set else { };
    isDerivation = x: b.isAttrs x && x.type or null == "derivation";

    # -- strings
    hasPrefix = prefix: s: b.substring 0 (b.stringLength prefix) s == prefix;
    hasSuffix =
      suffix: s:
      let
        ls = b.stringLength s;
        lx = b.stringLength suffix;
      in
      lx <= ls && b.substring (ls - lx) lx s == suffix;
    escapeRegex = b.replaceStrings regexSpecial (map (c: "\\${c}") regexSpecial);
    regexSpecial = [
      "\\"
      "["
      "{"
      "("
      ")"
      "^"
      "$"
      "?"
      "*"
      "+"
      "|"
      "."
    ];
    hasInfix = infix: content: b.match ".*${escapeRegex infix}.*" "${content}" != null;
    splitString = sep: s: b.filter b.isString (b.split (escapeRegex sep) s);
    # Safe words bare, everything else in single quotes (nixpkgs' rule).
    escapeShellArg =
      arg:
      let
        s = toString arg;
      in
      if b.match "[[:alnum:],._+:@%/-]+" s == null then
        "'${b.replaceStrings [ "'" ] [ "'\\''" ] s}'"
      else
        s;
    escapeShellArgs = args: b.concatStringsSep " " (map escapeShellArg args);
    versionOlder = v1: v2: b.compareVersions v2 v1 == 1;

    # -- derivations
    getBin = pkg: pkg.bin or pkg.out or pkg;
    getExe' =
      pkg: name:
      assert isDerivation pkg || throw "stub lib.getExe': not a derivation";
      "${getBin pkg}/bin/${name}";
    # nixpkgs warns and guesses from the name; the stub refuses.
    getExe =
      pkg:
      getExe' pkg (
        pkg.meta.mainProgram or (throw "stub lib.getExe: ${pkg.name or "?"} has no meta.mainProgram")
      );

    # -- meta
    licenses = {
      mit.spdxId = "MIT";
      asl20.spdxId = "Apache-2.0";
    };
    platforms = {
      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      darwin = [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
    };

    # -- lib.fileset: checks what the real one checks of the paths (they
    # exist, they are under root) and keeps the list; copies nothing.
    fileset = {
      unions =
        elements:
        {
          _type = "stubFileset";
          paths = b.concatMap (
            e:
            if e._type or null == "stubFileset" then
              e.paths
            else if !b.isPath e then
              throw "stub lib.fileset.unions: ${toString e} is not a path"
            else if !b.pathExists e then
              throw "stub lib.fileset.unions: ${toString e} does not exist"
            else
              [ e ]
          ) elements;
        };
      toSource =
        { root, fileset }:
        let
          set = if b.isPath fileset then lib.fileset.unions [ fileset ] else fileset;
          outside = b.filter (p: !hasPrefix "${toString root}/" "${toString p}/") set.paths;
        in
        if outside != [ ] then
          throw "stub lib.fileset.toSource: ${toString outside} not under the root ${toString root}"
        else
          {
            _type = "stubSource";
            inherit root;
            inherit (set) paths;
            outPath = "/nix/store/00000000000000000000000000000000-source";
          };
    };

    # -- the module system (./modules.nix)
    inherit (modules)
      mkOption
      mkEnableOption
      mkIf
      mkMerge
      mkOverride
      mkDefault
      mkForce
      literalExpression
      evalModules
      types
      ;
    stubModules = modules;
  };

  modules = import ./modules.nix { inherit lib; };
in
lib
