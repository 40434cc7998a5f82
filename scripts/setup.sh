#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for the demo, the tests and the benchmark.
# Idempotent: each step is skipped when its result is already there.
#   scripts/setup.sh            venv + package + npm tools (enough for `make demo`)
#   scripts/setup.sh --test     also the test extras and Debian packages the suite runs
#   scripts/setup.sh --bench    also nginx and wrk for the benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0; want_bench=0
for arg in "$@"; do
  case "$arg" in --test) want_test=1 ;; --bench) want_bench=1 ;; esac
done
PY=${PYTHON:-python3}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.stamp-$(cat pyproject.toml | sha1sum | cut -c1-12)-$want_test
if [ ! -f "$stamp" ]; then
  say "installing the gateway into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  if [ $want_test = 1 ]; then .venv/bin/pip install -q -e '.[test]'; else .venv/bin/pip install -q -e .; fi
  touch "$stamp"
fi
# py-spy, for `python -m bench.gateway_cpu --profile` (a wheel: no compiler needed)
if [ $want_bench = 1 ] && [ ! -x .venv/bin/py-spy ]; then .venv/bin/pip install -q -e '.[bench]'; fi

# npm tools: anvil, solc-js; for the browser tests @x402/fetch + @x402/evm, esbuild (bundles
# the paying page) and playwright-core (drives Debian's chromium). Re-run when the lock changes.
npm_stamp=node_modules/.stamp-$(cat package-lock.json | sha1sum | cut -c1-12)
if [ ! -f "$npm_stamp" ] || [ ! -x node_modules/.bin/solcjs ] || [ ! -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ]; then
  command -v npm >/dev/null || { say "npm is missing: install Node.js 18+ (apt-get install nodejs npm)"; exit 1; }
  say "installing the npm tools (anvil, solc-js, @x402/fetch, esbuild, playwright-core)"
  npm install --no-audit --no-fund --loglevel=error >/dev/null
  touch "$npm_stamp"
fi

apt_missing=()
need() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
if [ $want_test = 1 ]; then need redis-server redis-server; need chromium chromium; fi
if [ $want_bench = 1 ]; then need nginx nginx-light; need wrk wrk; fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${apt_missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1 \
      || say "could not install: ${apt_missing[*]} (tests that need them will be skipped with a reason)"
  else
    say "missing (install them with your package manager): ${apt_missing[*]}"
  fi
fi
exit 0
