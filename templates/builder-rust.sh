# tg-nix builder of nix:rust derivations (busybox sh; docs/nix.md, "The builder").
#
# The Nix sandbox has no /lib64, /usr or /bin, and the rustup toolchain's binaries need the ELF
# interpreter, glibc and a C linker. So the builder makes its own root: in a nested user and mount
# namespace it bind-mounts the content-addressed Debian sysroot at /usr, /lib and /lib64, plus
# /nix/store, /build, /proc and /dev, then chroots and runs the "inner" stage there. No nix.conf
# option and no host path is involved: every input is a declared store path.
#
# Inputs (derivation attributes): busybox rust sysroot src deps packageDir bin features script out.
set -eu
stage=${1:-outer}

if [ "$stage" = outer ]; then
  export PATH="$busybox/bin"
  R=/build/.root
  mkdir -p $R/usr $R/lib $R/lib64 $R/bin $R/nix/store $R/build $R/proc $R/dev $R/tmp $R/etc
  cp /etc/passwd /etc/group /etc/hosts $R/etc/
  # For build scripts that run /bin/sh.
  ln -s "$busybox/bin/busybox" $R/bin/sh
  exec unshare -U -r -m sh -euc "
    mount --rbind $sysroot/usr $R/usr
    mount --rbind $sysroot/lib $R/lib
    mount --rbind $sysroot/lib64 $R/lib64
    mount --rbind /nix/store $R/nix/store
    mount --bind /build $R/build
    mount --rbind /proc $R/proc
    mount --rbind /dev $R/dev
    exec chroot $R $busybox/bin/busybox sh $script inner
  "
fi

# Inner stage: in the chroot, with / made of the sysroot.
# busybox applets come last on PATH, so binutils' ar/ld win over busybox's.
mkdir -p /build/.busybox
"$busybox/bin/busybox" --install -s /build/.busybox
export PATH="$rust/bin:/usr/bin:/build/.busybox"
export HOME=/build/.home CARGO_HOME=/build/.cargo-home
mkdir -p "$HOME" "$CARGO_HOME"
cat > "$CARGO_HOME/config.toml" <<CFG
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "$deps"

[net]
offline = true
CFG

cp -r "$src" /build/src
chmod -R u+w /build/src
cd "/build/src/$packageDir"

# Debian's cc is an alternatives link tg-nix recreates in the sysroot; name the linker anyway.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=gcc
# Reproducible and free of store references: the vendored crates' paths (panic locations, debug
# info) would otherwise name the deps store path in the binary.
export RUSTFLAGS="--remap-path-prefix=$deps=/deps --remap-path-prefix=/build/src=/src ${RUSTFLAGS:-}"
export CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
if [ "${NIX_BUILD_CORES:-0}" -gt 0 ]; then
  export CARGO_BUILD_JOBS="$NIX_BUILD_CORES"
fi

set -- build --release --offline --locked --target-dir /build/target --bin "$bin"
if [ -n "$features" ]; then
  set -- "$@" --features "$features"
fi
cargo "$@"

mkdir -p "$out/bin"
cp "/build/target/release/$bin" "$out/bin/$bin"
