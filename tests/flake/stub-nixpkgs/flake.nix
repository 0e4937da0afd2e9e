# A stand-in for nixpkgs, for tests/flake.rs: the attributes tg-nix's flake.nix uses and nothing
# else, so the real Nix can evaluate and check that flake offline. Every package is a derivation
# whose builder does not exist (it is never built), and every function keeps the arguments it was
# called with as `stubArgs` for the test to read.
{
  outputs = { self }:
    let
      forSystem = system:
        let
          stub = name: attrs: derivation ({ inherit name system; builder = "/tg-nix-stub-nixpkgs-is-never-built"; } // attrs);
          package = name: stub name { };
          glibc = package "glibc";
          loader = if system == "x86_64-linux" then "ld-linux-x86-64.so.2" else "ld-linux-aarch64.so.1";
        in
        {
          inherit system;
          lib = {
            licenses = { mit = { spdxId = "MIT"; }; asl20 = { spdxId = "Apache-2.0"; }; };
            platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
          };
          stdenv = {
            hostPlatform = { inherit system; };
            cc = package "gcc-wrapper" // {
              bintools = package "binutils-wrapper" // { dynamicLinker = "${glibc}/lib/${loader}"; };
            };
          };
          busybox = package "busybox";
          rustc = package "rustc";
          cargo = package "cargo";
          clippy = package "clippy";
          rustfmt = package "rustfmt";
          nix = package "nix";
          iproute2 = package "iproute2";
          docker-client = package "docker-client";
          nodejs = package "nodejs";
          go = package "go";
          runCommand = name: env: script: stub name (env // { buildCommand = script; }) // { stubArgs = { inherit name env script; }; };
          symlinkJoin = args: stub args.name { inherit (args) paths; } // { stubArgs = args; };
          mkShell = args: stub "shell" { packages = args.packages or [ ]; } // { stubArgs = args; };
          rustPlatform = {
            buildRustPackage = args: stub "${args.pname}-${args.version}" {
              inherit (args) src;
              lockFile = args.cargoLock.lockFile;
            } // { stubArgs = args; inherit (args) meta; };
            importCargoLock = args: stub "cargo-vendor-dir" { inherit (args) lockFile; } // { stubArgs = args; };
          };
        };
    in
    {
      legacyPackages = {
        x86_64-linux = forSystem "x86_64-linux";
        aarch64-linux = forSystem "aarch64-linux";
      };
    };
}
