#!/usr/bin/env bash
# Installs what tg-nix and its tests need on a fresh Debian 12 machine, then prepares the Nix
# builders (`tg-nix setup`: nix.conf, GC roots, imports). Idempotent: a second run installs and
# imports nothing and takes a second or two. Needs root (run it with sudo otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, each with the reason it is here.
packages=(
  iproute2        # `ip`: the privileged tests observe namespaces, links and addresses with it
  python3         # the namespace tests run a tiny TCP peer inside instance namespaces
  ca-certificates # cargo fetches crates over https
  nix-bin         # the nix:* builders: Nix 2.8, used single-user by root, sandboxed, offline
  busybox-static  # the builder of every tg-nix derivation (static: the sandbox has no libc)
  docker.io       # the local:docker runner (Docker 20.10, API 1.41) and its end-to-end tests
  strace          # runner/tests/tc_bytes.rs captures what `tc` sends to compare tg-nix's requests
  libxml2-utils   # `xmllint --schema`: tests/reports.rs validates junit.xml against tests/fixtures/junit.xsd
  chromium        # tests/reports.rs renders index.html headless (DOM dump and a screenshot)
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

# Node and npm run the real JS SDK (@testground/sdk) in the sync conformance test. These machines
# ship Node 20 from its own packages; Debian's nodejs (18) works too and is installed if none is.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install nodejs and npm (run: sudo $0)" >&2
    exit 1
  fi
  echo "setup: installing nodejs npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

# local:docker talks to the Docker daemon; start one in the background when none answers (no
# systemd on these machines), and wait for it.
if ! docker info >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: the Docker daemon does not answer and starting it needs root (run: sudo $0)" >&2
    exit 1
  fi
  echo "setup: starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "setup: dockerd did not answer within 30 s; see /tmp/dockerd.log" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

# The Nix builders: nix.conf (sandbox on), GC roots, and the imports (busybox, the Debian C
# toolchain from verified .debs, the Rust toolchain). Cold about 20 s, then milliseconds.
if [[ $(id -u) -eq 0 ]]; then
  cargo run --release -q -p tg-nix -- setup
else
  echo "setup: not root: skipping \`tg-nix setup\` (the nix:* builders need it; run: sudo $0)" >&2
fi
echo "setup: ok ($(cargo --version), $(nix-build --version))"
