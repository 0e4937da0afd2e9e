# tg-nix for Nix users (docs/nix.md, "Using tg-nix from a flake"):
#   packages.<system>.default   the tg-nix binary, built with nixpkgs' rustPlatform
#   apps.<system>.default       `nix run` of it
#   devShells.<system>.default  what hacking on tg-nix and running its tests takes
#   overlays.default            pkgs.tg-nix
#   lib                         the nix/ library, with the toolchain taken from nixpkgs instead of
#                               what `tg-nix setup` imported: a user's flake builds plans with it
# tg-nix itself needs none of this: it builds with plain Nix and no nixpkgs (docs/nix.md).
{
  description = "tg-nix: a Testground-compatible test runner with hermetic Nix builds";

  # Only nixpkgs: the per-system loop below is written out rather than taken from flake-utils.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      # The builders run busybox, Linux namespaces and a chroot: Linux only.
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};

      version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;

      # What cargo reads: editing plans/, docs/ or scripts/ does not rebuild the package. tests/ is
      # there because cli/Cargo.toml names its files as [[test]] targets.
      root = toString ./.;
      cargoSource = builtins.path {
        name = "tg-nix-source";
        path = ./.;
        filter = path: type:
          let
            relative = builtins.substring (builtins.stringLength root + 1) (builtins.stringLength path) path;
            top = builtins.head (builtins.split "/" relative);
          in
          builtins.elem top [ "Cargo.toml" "Cargo.lock" "cli" "model" "sync" "runner" "builders" "templates" "nix" "tests" ];
      };

      tgNixPackage = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "tg-nix";
        inherit version;
        src = cargoSource;
        cargoLock.lockFile = ./Cargo.lock;
        # The binary (package tg-nix in cli/); the other workspace members are the libraries it links.
        cargoBuildFlags = [ "--package" "tg-nix" ];
        # The tests need root, network namespaces, Nix with its sandbox and a Docker daemon, none of
        # which a build in the Nix sandbox has: run them with scripts/test.sh.
        doCheck = false;
        meta = {
          description = "Testground-compatible test runner for distributed systems, with hermetic Nix builds";
          license = [ pkgs.lib.licenses.mit pkgs.lib.licenses.asl20 ];
          mainProgram = "tg-nix";
          platforms = pkgs.lib.platforms.linux;
        };
      };

      # The nix/ library with a toolchain from nixpkgs (nix/tg-nix.nix, `toolchain`): the same
      # mkRustPlan derivation and builder script, other inputs.
      toolchainFromNixpkgs = pkgs:
        let
          # The ELF interpreter, for binaries that expect it at its usual place. nixpkgs' own need
          # none: their interpreter and libraries are store paths, and the builder mounts /nix/store.
          loader = pkgs.stdenv.cc.bintools.dynamicLinker;
        in
        {
          system = pkgs.stdenv.hostPlatform.system;
          # Needs sh, unshare, mount and chroot; linked against nixpkgs' glibc, which is in every
          # build's closure.
          busybox = pkgs.busybox;
          rust = pkgs.symlinkJoin { name = "tg-nix-rust"; paths = [ pkgs.rustc pkgs.cargo ]; };
          # The builder mounts usr/, lib/ and lib64/ as the build's root and links with `gcc` from
          # /usr/bin: here the compiler and binutils wrappers of nixpkgs' stdenv.
          sysroot = pkgs.runCommand "tg-nix-sysroot-nixpkgs" { } ''
            mkdir -p $out/usr/bin $out/lib $out/lib64
            for tool in ${pkgs.stdenv.cc.bintools}/bin/* ${pkgs.stdenv.cc}/bin/*; do
              ln -sf "$tool" $out/usr/bin/
            done
            ln -s ${loader} $out/lib/
            ln -s ${loader} $out/lib64/
          '';
        };

      withNixpkgs = pkgs: import ./nix/tg-nix.nix { toolchain = toolchainFromNixpkgs pkgs; };
    in
    {
      packages = forAllSystems (system: rec {
        tg-nix = tgNixPackage (pkgsFor system);
        default = tg-nix;
      });

      apps = forAllSystems (system: {
        default = {
          type = "app";
          program = "${self.packages.${system}.default}/bin/tg-nix";
          meta.description = "Run Testground plans with tg-nix";
        };
      });

      devShells = forAllSystems (system:
        let pkgs = pkgsFor system; in
        {
          # Rust for the workspace, Nix for nix:rust, ip for looking into the namespaces, the
          # Docker CLI for local:docker, Node for the JS SDK test (tests/js_sdk.rs), Go for Go
          # plans. Nim and Chromium join when their builders do (docs/roadmap.md).
          default = pkgs.mkShell {
            packages = [
              pkgs.rustc
              pkgs.cargo
              pkgs.clippy
              pkgs.rustfmt
              pkgs.nix
              pkgs.iproute2
              pkgs.docker-client
              pkgs.nodejs
              pkgs.go
            ];
          };
        });

      overlays.default = final: prev: { tg-nix = tgNixPackage final; };

      lib = {
        # nix/tg-nix.nix as it is: `tgNix { imports = import ./imports.nix; }` (what tg-nix setup
        # imported) or `tgNix { toolchain = { busybox, rust, sysroot }; }`.
        tgNix = import ./nix/tg-nix.nix;
        # The builder of Rust plans (mkRustPlan's builderScript).
        builderRust = ./templates/builder-rust.sh;
        inherit toolchainFromNixpkgs withNixpkgs;

        # A Rust plan built with nixpkgs' toolchain. `src` holds the Cargo.lock; `deps` defaults to
        # nixpkgs' vendoring of it (crates fetched by hash; git dependencies need importCargoLock's
        # outputHashes). The program is $out/bin/<bin>.
        mkRustPlan =
          { pkgs
          , name
          , src
          , bin
          , deps ? pkgs.rustPlatform.importCargoLock {
              lockFile = if builtins.isPath src then src + "/Cargo.lock" else "${src}/Cargo.lock";
            }
          , packageDir ? "."
          , features ? [ ]
          , builderScript ? ./templates/builder-rust.sh
          }:
          (withNixpkgs pkgs).mkRustPlan { inherit name src deps bin packageDir features builderScript; };
      };
    };
}
