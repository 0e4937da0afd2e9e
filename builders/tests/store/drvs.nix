# Golden derivations for tests/store_paths.rs. No nixpkgs: plain `derivation`s with builder
# /bin/sh. They are only instantiated, never built, so the builder need not exist.
#
# The fixed hashes are those of ./vendor-tree and ./vendor-tree/payload.txt, so each fixed output
# path must equal what `nix-store --add-fixed` gives for the same content and name. If you change
# vendor-tree, update them (`nix-hash --type sha256 --base32 vendor-tree`, …) and regenerate the
# fixtures with TG_NIX_UPDATE_FIXTURES=1 cargo test -p tg-nix-builders --test store_paths.
let
  system = "x86_64-linux";
  builder = "/bin/sh";

  # A source path (builtins.path = NAR sha256 "source" path) and text files (builtins.toFile).
  src = builtins.path { path = ./vendor-tree; name = "tg-src"; };
  script = builtins.toFile "build.sh" ''
    set -eu
    cp -r ${src} "$out"
  '';
  hidden = builtins.toFile ".hidden-config" "Nix 2.8 accepts names that start with a period\n";

  # Fixed-output derivations: never built, only their paths matter.
  vendor = derivation {
    name = "vendor-tree"; inherit system builder;
    args = [ "-c" "echo this FOD must be added with nix-store --add-fixed; exit 1" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "1j1li51i20mp1bf3sqkqrh05mnvckvkpabgx3q524nw7fpr1bz9p";
  };
  vendorSha1 = derivation {
    name = "vendor-tree"; inherit system builder; args = [ "-c" "exit 1" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "620d20593fd01f6aadc97f3aad97808300895603";
  };
  payload = derivation {
    name = "payload.txt"; inherit system builder; args = [ "-c" "exit 1" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "303d45890293557846f1e2d6379bf9bc784b21f5bdee7a469ec5f441cd82ca0d";
  };
  payloadSha512 = derivation {
    name = "payload.txt"; inherit system builder; args = [ "-c" "exit 1" ];
    outputHashAlgo = "sha512";
    outputHash = "385yvsi7j1qpahz2by2d51i29vnh26wirkm8ddmszv4xv9vrnx24xip6rqmgmaqlfnmm323yffqrvy1qz7410n3whzn8mdq3b0c9zgg";
  };

  leaf = derivation {
    name = "leaf"; inherit system builder;
    args = [ "-c" "echo leaf > $out" ];
  };
  multi = derivation {
    name = "multi"; inherit system builder;
    outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "echo > $out; echo > $dev; echo > $lib" ];
    leafPath = leaf;
  };
  escapes = derivation {
    name = "escapes"; inherit system builder;
    args = [ "-c" ''
      printf '%s\n' "multi-line
        argument with 'quotes'"
    '' "tab\there" "back\\slash" "dollar \${x} $y" ];
    quotes = "double \" and single ' quotes";
    newlines = "line1\nline2\r\nline3\n";
    backslashes = "\\ \\\\ \\n (a backslash then n)";
    unicode = "ünïcödé ✓ 🦀";
    empty = "";
    flag = true;
    unset = false;
    count = 42;
    words = [ "a" "b c" leaf ];
  };
  mid = derivation {
    name = "mid"; inherit system builder;
    args = [ "-c" "cat ${leaf} ${multi.dev} > $out" ];
  };
  top = derivation {
    name = "top"; inherit system builder;
    args = [ "-c" ". ${script}" ];
    inherit src hidden;
    deps = [ mid multi.lib multi.dev vendor vendorSha1 payload payloadSha512 escapes ];
  };
in
{ inherit vendor vendorSha1 payload payloadSha512 leaf multi escapes mid top; }
