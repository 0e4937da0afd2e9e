# tg-nix's flake.nix evaluated against the stub nixpkgs (stub-nixpkgs/flake.nix), for tests/flake.rs:
# what each output is, as plain data the test checks. Needs no nixpkgs, no network and no store
# writes (`nix-instantiate --eval` computes store paths without adding anything).
# `repo`: the checkout's absolute path, as a string (--argstr).
{ repo }:
let
  root = /. + repo;
  flake = import (root + "/flake.nix");
  nixpkgs = (import ./stub-nixpkgs/flake.nix).outputs { self = nixpkgs; };
  # A flake's `self` is its outputs plus the source tree's outPath.
  self = outputs // { outPath = root; };
  outputs = flake.outputs { inherit self nixpkgs; };

  system = "x86_64-linux";
  pkgs = nixpkgs.legacyPackages.${system};
  package = outputs.packages.${system}.default;
  inherit (outputs) lib;

  planArgs = { name = "stub-plan"; src = ./stub-plan; bin = "stub-plan"; features = [ "x" "y" ]; };
  plan = lib.mkRustPlan (planArgs // { inherit pkgs; });
  # The same plan through the library itself, every default spelt out.
  planByHand = (lib.tgNix { toolchain = lib.toolchainFromNixpkgs pkgs; }).mkRustPlan (planArgs // {
    deps = pkgs.rustPlatform.importCargoLock { lockFile = ./stub-plan/Cargo.lock; };
    packageDir = ".";
    builderScript = lib.builderRust;
  });
  fails = value: !(builtins.tryEval value).success;
in
{
  inherit (flake) description;
  nixpkgsUrl = flake.inputs.nixpkgs.url;
  inputNames = builtins.attrNames flake.inputs;
  outputsIsFunction = builtins.isFunction flake.outputs;
  outputsArgs = builtins.attrNames (builtins.functionArgs flake.outputs);
  outputNames = builtins.attrNames outputs;
  systems = {
    packages = builtins.attrNames outputs.packages;
    apps = builtins.attrNames outputs.apps;
    devShells = builtins.attrNames outputs.devShells;
  };
  workspaceVersion = (builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"))).workspace.package.version;
  package = {
    inherit (package.stubArgs) pname version doCheck cargoBuildFlags;
    lockFile = toString package.stubArgs.cargoLock.lockFile;
    inherit (package.meta) mainProgram;
    names = builtins.attrNames outputs.packages.${system};
    tgNixIsDefault = outputs.packages.${system}.tg-nix.drvPath == package.drvPath;
    drvPath = package.drvPath;
  };
  app = {
    inherit (outputs.apps.${system}.default) type program;
    packageOut = package.outPath;
  };
  shellPackages = map (p: p.name) outputs.devShells.${system}.default.stubArgs.packages;
  overlay = {
    pname = (outputs.overlays.default pkgs pkgs).tg-nix.stubArgs.pname;
    isFunction = builtins.isFunction outputs.overlays.default;
  };
  libNames = builtins.attrNames lib;
  toolchain = let t = lib.toolchainFromNixpkgs pkgs; in {
    inherit (t) system;
    busybox = t.busybox.name;
    rust = map (p: p.name) t.rust.stubArgs.paths;
    sysrootName = t.sysroot.name;
    sysrootScript = t.sysroot.stubArgs.script;
  };
  plan = {
    inherit (plan) name system bin packageDir features builder args;
    busybox = plan.busybox.name;
    rust = plan.rust.name;
    sysroot = plan.sysroot.name;
    deps = plan.deps.name;
    depsLockFile = toString plan.deps.stubArgs.lockFile;
    script = toString plan.script;
    sameAsByHand = plan.drvPath == planByHand.drvPath;
    drvPath = plan.drvPath;
  };
  # The library refuses a call without exactly one complete toolchain provision.
  refuses = {
    both = fails (lib.tgNix { imports = { }; toolchain = lib.toolchainFromNixpkgs pkgs; }).busybox;
    neither = fails (lib.tgNix { }).busybox;
    incomplete = fails (lib.tgNix { toolchain = { busybox = pkgs.busybox; }; }).rust;
  };
}
