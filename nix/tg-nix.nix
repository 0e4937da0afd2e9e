# tg-nix's Nix library: what every generated expression imports. Plain Nix, no nixpkgs.
#
# It is called with one of two toolchain provisions, the only input that differs between tg-nix's
# own offline builds and a flake's (docs/nix.md, "Using tg-nix from a flake"):
#
# `imports`: what `tg-nix setup` put into the store on this machine (tg-nix writes it as
# imports.nix beside the generated files):
#   busybox = { name; narHash; }            static busybox as <dir>/bin/busybox: every builder
#   rust    = { name; narHash; }            the rustup toolchain without share/doc
#   debs    = [ { name; url; sha256; } … ]  Debian .debs of the C toolchain, checked against apt
#
# `toolchain`: the same three as derivations or store paths, from anywhere (flake.nix's
# lib.toolchainFromNixpkgs takes them from nixpkgs):
#   busybox  <dir>/bin/busybox with sh, unshare, mount and chroot: the builder of every derivation
#   rust     <dir>/bin/cargo and <dir>/bin/rustc
#   sysroot  usr/ (a `gcc` in usr/bin), lib/ and lib64/: what the builder mounts as the build's root
#   system   optional, "x86_64-linux" when absent
#
# With `imports`, every input is content-addressed: the toolchain and busybox are recursive
# fixed-output derivations whose hash tg-nix recorded when it imported them, so this file says
# exactly what a build used, and a path that is missing from the store fails evaluation with "run
# tg-nix setup" instead of running a builder. See docs/nix.md.
{ imports ? null, toolchain ? null }:
let
  system = if toolchain == null then "x86_64-linux" else toolchain.system or "x86_64-linux";

  # A tree tg-nix added with `nix-store --add-fixed --recursive sha256` (or builtins.path): a
  # fixed-output derivation with the same name and NAR hash has the same output path, which is
  # already valid, so Nix never runs its builder. If the path is not there, say how to get it.
  fixedPath = { name, narHash, what ? name }:
    let
      drv = derivation {
        inherit name system;
        builder = "/tg-nix-imports-are-added-by-tg-nix-setup";
        outputHashMode = "recursive";
        outputHashAlgo = "sha256";
        outputHash = narHash;
      };
    in
    if builtins.pathExists (builtins.unsafeDiscardStringContext drv.outPath) then drv
    else throw "tg-nix: ${what} (${drv.outPath}) is not in the Nix store: run `tg-nix setup` (imports) or `tg-nix run` again (plan sources and vendored dependencies)";

  # The toolchain provision (DESIGN.md, decision 1: one swappable input, not a second build
  # system). Everything below uses busybox, rust and sysroot from here and nothing else.
  provided =
    if imports != null && toolchain != null then
      throw "tg-nix.nix: pass either `imports` (what tg-nix setup imported) or `toolchain` (busybox, rust, sysroot), not both"
    else if imports != null then {
      busybox = fixedPath (imports.busybox // { what = "busybox (the builder of every tg-nix derivation)"; });
      rust = fixedPath (imports.rust // { what = "the Rust toolchain ${imports.rust.name}"; });
      sysroot = debianSysroot;
    }
    else if toolchain != null then
      let missing = builtins.filter (a: !(toolchain ? ${a})) [ "busybox" "rust" "sysroot" ];
      in if missing == [ ] then toolchain
      else throw "tg-nix.nix: the toolchain has no ${builtins.concatStringsSep ", " missing} (it needs busybox, rust and sysroot; see docs/nix.md)"
    else
      throw "tg-nix.nix: pass `imports` (imports.nix, written by tg-nix setup) or `toolchain` (busybox, rust, sysroot; flake.nix's lib.toolchainFromNixpkgs makes one from nixpkgs)";

  inherit (provided) busybox rust sysroot;

  # One Debian package. tg-nix setup downloaded it with apt, checked it against the SHA256 of apt's
  # signed index and added it with `nix-store --add-fixed sha256`, so the path is valid and nothing
  # is fetched. If it was garbage-collected, Nix fetches it from Debian again and checks the hash.
  fetchDeb = { name, url, sha256 }: derivation {
    inherit name url system;
    builder = "builtin:fetchurl";
    urls = [ url ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = sha256;
    executable = false;
    unpack = false;
    preferLocalBuild = true;
  };

  # glibc, gcc-12 and binutils unpacked from the .debs: the C toolchain and the ELF interpreter
  # the Rust toolchain's binaries need, the sysroot of `imports`. The builders bind-mount its usr/,
  # lib/ and lib64/.
  debianSysroot = derivation {
    name = "tg-nix-sysroot-debian";
    inherit system;
    builder = "${busybox}/bin/busybox";
    debs = map fetchDeb imports.debs;
    args = [ "sh" "-euc" ''
      export PATH=${busybox}/bin
      mkdir -p $out
      for d in $debs; do dpkg-deb -x $d $out; done
      # Debian's alternatives (cc, gcc) are made by maintainer scripts, not shipped in the .debs.
      ln -sf gcc-12 $out/usr/bin/gcc
      ln -sf gcc-12 $out/usr/bin/cc
      ln -sf x86_64-linux-gnu-gcc-12 $out/usr/bin/x86_64-linux-gnu-gcc
      rm -rf $out/usr/share/doc $out/usr/share/man $out/usr/share/info $out/usr/share/locale $out/usr/share/lintian
    '' ];
  };

  # A Rust plan: `cargo build --release --offline --locked` of `src` against the vendored `deps`,
  # with the toolchain and the sysroot, in a nested user namespace + chroot (builderScript).
  # The output is $out/bin/<bin>.
  mkRustPlan = { name, src, deps, bin, packageDir ? ".", features ? [ ], builderScript }:
    derivation {
      inherit name system src deps bin packageDir busybox rust sysroot;
      features = builtins.concatStringsSep "," features;
      builder = "${busybox}/bin/busybox";
      script = builderScript;
      args = [ "sh" builderScript "outer" ];
    };
in
{
  inherit system fixedPath busybox rust fetchDeb sysroot mkRustPlan;
}
