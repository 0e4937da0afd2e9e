#!/usr/bin/env bash
# Sets up the machine and runs every test: lints, unit tests, and the end-to-end tests that run
# real plans through the real runner. As root they use network namespaces; with CI=true nothing
# that needs root may skip (the tests fail and say why instead).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

if [[ "${CI:-}" == "true" && $(id -u) -ne 0 ]]; then
  echo "test: CI=true but not running as root: the namespace and end-to-end tests need root" >&2
  exit 1
fi

# Plans are built by tg-nix itself during the end-to-end tests; they share one cargo target dir
# so their dependencies compile once.
export TG_NIX_TEST_PLAN_TARGET="$PWD/target/plans"

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
