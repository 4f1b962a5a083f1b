# A small module system with the semantics of nixpkgs' lib.modules for what
# nix/module.nix, flake.nix and the stub NixOS (./nixos.nix) use: modules as
# functions, paths or attribute sets, `imports`, `options`/`config`,
# mkOption, mkIf, mkMerge, mkOverride (mkDefault, mkForce), submodules, and
# the types below. A definition of an option that no module declares is an
# error, as in NixOS; so is a value of the wrong type.
#
# Not implemented (nothing here uses them): mkOrder, freeform modules,
# disabledModules, option `apply`, `readOnly`, `_module.args`, merging one
# option declared twice. Messages follow nixpkgs' wording, not its format.
{ lib }:
let
  b = builtins;

  isOption = x: b.isAttrs x && x._type or null == "option";
  showLoc = b.concatStringsSep ".";

  # -- modules

  # A module (function, path or attribute set) as
  # { key, file, options, config, imports }.
  normalise =
    key: args: m:
    let
      fromFile = b.isPath m || b.isString m;
      file = if fromFile then toString m else key;
      value = if fromFile then import m else m;
      r = if b.isFunction value then value args else value;
      structured = r ? options || r ? config;
      known = [
        "imports"
        "options"
        "config"
        "_file"
        "key"
        "meta"
      ];
      unknown = b.filter (n: !b.elem n known) (b.attrNames r);
    in
    if !b.isAttrs r then
      throw "stub evalModules: the module ${file} is not an attribute set"
    else if structured && unknown != [ ] then
      throw "stub evalModules: the module ${file} has ${toString unknown} beside `options`/`config` (move it under `config`)"
    else
      {
        inherit key;
        file = r._file or file;
        options = r.options or { };
        config =
          if structured then
            r.config or { }
          else
            b.removeAttrs r [
              "imports"
              "_file"
              "key"
              "meta"
            ];
        imports = r.imports or [ ];
      };

  # Every module reachable through `imports`, each once (a file by its path).
  collect =
    args: modules:
    let
      item =
        parent: i: m:
        let
          key = if b.isPath m || b.isString m then toString m else "${parent}:${toString i}";
        in
        {
          inherit key;
          module = normalise key args m;
        };
    in
    map (x: x.module) (
      b.genericClosure {
        startSet = lib.imap0 (item "<modules>") modules;
        operator = x: lib.imap0 (item x.key) x.module.imports;
      }
    );

  # One option tree from every module's `options`.
  mergeDecls =
    loc: trees:
    b.zipAttrsWith (
      name: decls:
      let
        loc' = loc ++ [ name ];
      in
      if b.any isOption decls then
        if b.length decls == 1 then
          b.head decls
        else
          throw "stub evalModules: `${showLoc loc'}' is declared more than once (not supported by the stub)"
      else
        mergeDecls loc' decls
    ) trees;

  # -- definitions

  # A definition of a namespace (a set of options, not an option) as
  # attribute sets, the properties pushed down to its attributes: the names
  # are known without evaluating an mkIf's condition, which may read the
  # very config being computed (`config = mkIf cfg.enable { ... }`).
  pushDown =
    loc: v:
    let
      wrapAll = wrap: map (b.mapAttrs (_: wrap));
    in
    if v._type or null == "if" then
      wrapAll (mkIf v.condition) (pushDown loc v.content)
    else if v._type or null == "merge" then
      b.concatMap (pushDown loc) v.contents
    else if v._type or null == "override" then
      wrapAll (mkOverride v.priority) (pushDown loc v.content)
    else if b.isAttrs v then
      [ v ]
    else
      throw "stub evalModules: `${showLoc loc}' is a set of options, not an option, but is defined as a ${b.typeOf v}";

  # A definition of an option as [ { prio, value } ]: mkIf and mkMerge taken
  # away, mkOverride read (a plain value has priority 100). The content of an
  # override is not forced here.
  dischargeValue =
    v:
    if v._type or null == "if" then
      if v.condition then dischargeValue v.content else [ ]
    else if v._type or null == "merge" then
      b.concatMap dischargeValue v.contents
    else if v._type or null == "override" then
      [
        {
          prio = v.priority;
          value = v.content;
        }
      ]
    else
      [
        {
          prio = 100;
          value = v;
        }
      ];

  # [ { file, value } ] -> [ { file, prio, value } ]
  expand = b.concatMap (d: map (p: p // { inherit (d) file; }) (dischargeValue d.value));

  # The value of an option at `loc` from its expanded definitions (the
  # default among them): the highest priority wins, each winner is checked
  # against the type, the type merges them.
  mergeDefs =
    loc: type: defs:
    let
      best = b.foldl' (p: d: if d.prio < p then d.prio else p) 9999 defs;
      winners = b.filter (d: d.prio == best) defs;
      checked = map (
        d:
        if type.check d.value then
          d
        else
          throw "The option `${showLoc loc}' in ${d.file} is not of type `${type.expr}'."
      ) winners;
    in
    if defs == [ ] then
      throw "The option `${showLoc loc}' is used but not defined."
    else
      type.merge loc checked;

  evalOption =
    loc: opt: defs:
    mergeDefs loc (opt.type or types.unspecified) (
      expand defs
      ++ lib.optional (opt ? default) {
        prio = 1500;
        value = opt.default;
        file = "the default";
      }
    );

  # The config below `loc`: every declared option's value.
  evalTree =
    loc: tree: defs:
    b.mapAttrs (
      name: decl:
      let
        loc' = loc ++ [ name ];
        sub = b.concatMap (
          d:
          b.concatMap (
            v:
            lib.optional (v ? ${name}) {
              inherit (d) file;
              value = v.${name};
            }
          ) (pushDown loc d.value)
        ) defs;
      in
      if isOption decl then evalOption loc' decl sub else evalTree loc' decl sub
    ) tree;

  # True, or an error naming a defined option that no module declares.
  checkDefs =
    loc: tree: defs:
    b.all (
      d:
      b.all (
        v:
        b.all (
          name:
          let
            loc' = loc ++ [ name ];
          in
          if !(tree ? ${name}) then
            throw "The option `${showLoc loc'}' does not exist. Definition values: in ${d.file}"
          else if isOption tree.${name} then
            true
          else
            checkDefs loc' tree.${name} [
              {
                inherit (d) file;
                value = v.${name};
              }
            ]
        ) (b.attrNames v)
      ) (pushDown loc d.value)
    ) defs;

  evalModules =
    {
      modules,
      specialArgs ? { },
      prefix ? [ ],
    }:
    let
      args = {
        inherit lib config options;
      }
      // specialArgs;
      collected = collect args modules;
      options = mergeDecls prefix (map (m: m.options) collected);
      defs = map (m: {
        inherit (m) file;
        value = m.config;
      }) collected;
      # What the modules see; the result is checked first.
      config = evalTree prefix options defs;
      checked = checkDefs prefix options defs;
    in
    {
      inherit options;
      config = b.seq checked config;
    };

  # -- options and properties

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption =
    name:
    mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };

  # -- types. `expr` is how the type is written (`nullOr (listOf str)`),
  # which the checks compare.

  mkType =
    {
      name,
      expr ? name,
      check ? (_: true),
      merge ? mergeEqual,
      getSubOptions ? (_: { }),
    }:
    {
      _type = "option-type";
      inherit
        name
        expr
        check
        merge
        getSubOptions
        ;
    };
  wrap = t: if b.match "[A-Za-z]+" t.expr != null then t.expr else "(${t.expr})";

  # All definitions must be equal (str, bool, path, ...).
  mergeEqual =
    loc: defs:
    let
      first = b.head defs;
    in
    (b.foldl' (
      acc: d:
      if d.value == acc.value then
        acc
      else
        throw "The option `${showLoc loc}' has conflicting definition values: in ${acc.file} and ${d.file}"
    ) first (b.tail defs)).value;
  mergeOne =
    loc: defs:
    if b.length defs == 1 then
      (b.head defs).value
    else
      throw "The option `${showLoc loc}' is defined more than once: ${toString (map (d: d.file) defs)}";

  isStringLike = x: b.isString x || b.isPath x || x ? outPath || x ? __toString;

  types = rec {
    unspecified = mkType {
      name = "unspecified";
      merge = mergeOne;
    };
    str = mkType {
      name = "str";
      check = b.isString;
    };
    lines = mkType {
      name = "lines";
      check = b.isString;
      merge = _: defs: b.concatStringsSep "\n" (map (d: d.value) defs);
    };
    bool = mkType {
      name = "bool";
      check = b.isBool;
    };
    int = mkType {
      name = "int";
      check = b.isInt;
    };
    path = mkType {
      name = "path";
      check = x: isStringLike x && b.substring 0 1 (toString x) == "/";
    };
    package = mkType {
      name = "package";
      check = x: lib.isDerivation x || (b.isString x && lib.hasPrefix b.storeDir x);
      merge = mergeOne;
    };
    nullOr =
      t:
      mkType {
        name = "nullOr";
        expr = "nullOr ${wrap t}";
        check = x: x == null || t.check x;
        merge =
          loc: defs:
          let
            nulls = b.length (b.filter (d: d.value == null) defs);
          in
          if nulls == b.length defs then
            null
          else if nulls != 0 then
            throw "The option `${showLoc loc}' is defined both null and not null"
          else
            t.merge loc defs;
        inherit (t) getSubOptions;
      };
    either =
      t1: t2:
      mkType {
        name = "either";
        expr = "either ${wrap t1} ${wrap t2}";
        check = x: t1.check x || t2.check x;
        merge =
          loc: defs:
          if b.all (d: t1.check d.value) defs then
            t1.merge loc defs
          else if b.all (d: t2.check d.value) defs then
            t2.merge loc defs
          else
            mergeOne loc defs;
      };
    listOf =
      t:
      mkType {
        name = "listOf";
        expr = "listOf ${wrap t}";
        check = b.isList;
        merge =
          loc: defs:
          b.concatMap (
            d:
            lib.imap0 (
              i: v:
              mergeDefs (loc ++ [ "[${toString i}]" ]) t [
                {
                  inherit (d) file;
                  prio = 100;
                  value = v;
                }
              ]
            ) d.value
          ) defs;
        getSubOptions = prefix: t.getSubOptions (prefix ++ [ "*" ]);
      };
    attrsOf =
      t:
      mkType {
        name = "attrsOf";
        expr = "attrsOf ${wrap t}";
        check = b.isAttrs;
        # Per attribute, its definitions as an option's; an attribute whose
        # definitions are all false mkIfs is left out.
        merge =
          loc: defs:
          let
            names = lib.unique (b.concatMap (d: b.attrNames d.value) defs);
            defsOf =
              name:
              expand (
                b.concatMap (
                  d:
                  lib.optional (d.value ? ${name}) {
                    inherit (d) file;
                    value = d.value.${name};
                  }
                ) defs
              );
            present = b.filter (name: defsOf name != [ ]) names;
          in
          lib.genAttrs present (name: mergeDefs (loc ++ [ name ]) t (defsOf name));
        getSubOptions = prefix: t.getSubOptions (prefix ++ [ "<name>" ]);
      };
    submodule =
      module:
      mkType {
        name = "submodule";
        check = x: b.isAttrs x || b.isFunction x || b.isPath x;
        merge =
          loc: defs:
          (evalModules {
            modules = [ module ] ++ map (d: if b.isAttrs d.value then { _file = d.file; config = d.value; } else d.value) defs;
            specialArgs.name = lib.last loc;
            prefix = loc;
          }).config;
        getSubOptions =
          prefix:
          (evalModules {
            modules = [ module ];
            specialArgs.name = "<name>";
            inherit prefix;
          }).options;
      };
    # NixOS' systemd unit settings: lists concatenate, anything else must be
    # the same in every definition.
    unitOption = mkType {
      name = "unitOption";
      merge =
        loc: defs:
        if b.any (d: b.isList d.value) defs then
          b.concatMap (d: lib.toList d.value) defs
        else
          mergeEqual loc defs;
    };
  };
in
{
  inherit
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
    collect
    isOption
    ;
}
