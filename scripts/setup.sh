#!/usr/bin/env bash
# Installs what tg-nix and its tests need on a fresh Debian 12 machine. Idempotent: a second run
# installs nothing and takes a second. Needs root for apt (run it with sudo otherwise).
set -euo pipefail

# Debian packages, each with the reason it is here.
packages=(
  iproute2        # `ip`: the privileged tests observe namespaces, links and addresses with it
  python3         # the namespace tests run a tiny TCP peer inside instance namespaces
  ca-certificates # cargo fetches crates over https
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install: ${missing[*]} (run: sudo $0)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
echo "setup: ok ($(cargo --version))"
