# The derivations nix/tg-nix.nix makes for one fixed `imports`, for tests/flake.rs. The imports are
# four tiny stand-in trees the test adds to the store (their NAR hashes come in as `hashes`) and
# two .debs that are never fetched. Their .drv paths must not change when the library changes
# shape (a flake's toolchain, a refactor): every unit tg-nix generated would rebuild otherwise.
# `library` (nix/tg-nix.nix) and `builderScript` come as absolute paths in strings (--argstr),
# `hashes` as JSON: { busybox, rust, src, deps }.
{ library, hashes, builderScript }:
let
  hashOf = name: (builtins.fromJSON hashes).${name};
  fixed = name: { name = "tg-nix-golden-${name}"; narHash = hashOf name; };
  deb = name: {
    name = "${name}_1.0-1_amd64.deb";
    url = "http://deb.debian.org/debian/pool/main/t/${name}/${name}_1.0-1_amd64.deb";
    sha256 = builtins.hashString "sha256" name;
  };
  tg = import (/. + library) {
    imports = {
      busybox = fixed "busybox";
      rust = fixed "rust";
      debs = [ (deb "tg-nix-golden-a") (deb "tg-nix-golden-b") ];
    };
  };
  planArgs = {
    name = "tg-nix-golden";
    src = tg.fixedPath (fixed "src");
    deps = tg.fixedPath (fixed "deps");
    bin = "golden";
    packageDir = "crates/golden";
    features = [ "a" "b" ];
    builderScript = /. + builderScript;
  };
  plan = tg.mkRustPlan planArgs;
  # packageDir and features left to their defaults.
  planDefaults = tg.mkRustPlan {
    name = "tg-nix-golden-defaults";
    src = tg.fixedPath (fixed "src");
    deps = tg.fixedPath (fixed "deps");
    bin = "golden";
    builderScript = /. + builderScript;
  };
  # The same three parts given as a `toolchain` (the flake's way): the provision is only an input.
  swapped = import (/. + library) { toolchain = { inherit (tg) busybox rust sysroot; }; };
in
{
  inherit (tg) system;
  busybox = tg.busybox.drvPath;
  rust = tg.rust.drvPath;
  deb = (tg.fetchDeb (deb "tg-nix-golden-a")).drvPath;
  sysroot = tg.sysroot.drvPath;
  plan = plan.drvPath;
  planDefaults = planDefaults.drvPath;
  planSwapped = (swapped.mkRustPlan planArgs).drvPath;
}
