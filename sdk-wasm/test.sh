#!/usr/bin/env bash
# Runs every test of the browser SDK:
#   1. native unit tests of the sans-IO core (cargo test -p warren-sdk; left out when
#      ./dev test ran them in its cargo-test step, which sets WARREN_SDK_NATIVE_TESTED=1);
#   2. the npm package build (build.sh, which prints the gzipped size);
#   3. wasm-bindgen-test in headless Chromium against a REAL stack (two gateways, the demo
#      service, RabbitMQ at AMQP_ADDR) started here with `warren-stack`;
#   4. a Node test that imports the built package as an app does and calls it;
#   5. tsc --strict over an app's use of the shipped .d.ts (skipLibCheck false,
#      lib ES2023 + DOM), with TypeScript and @types/react from npm (tests/types/);
#   6. the install routes (tests/install/run.sh): a fresh Vite + React + TypeScript app
#      in a temp dir installs the package as a link and from a tarball, then tsc, vite
#      build, the built app and the dev server in headless Chromium (connect to the
#      stack), and Node; prints what the SDK adds to the app's build, gzipped.
# The stack gets two extra channels: `silent`, which the demo service consumes and never
# answers (timeout test), and `nobody`, which no service consumes (no_service test). A
# second stack runs in jwt mode (`--auth jwt`, no leeway, no demo service) for the token
# tests: getToken, renewal on the live connection, expiry with 4004. A third one's
# gateways answer requests by direct reply-to (`--request-replies direct`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
say() { printf '\033[1m[sdk-wasm test]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------
if ! command -v chromedriver >/dev/null || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing chromium and chromium-driver with apt-get"
    { apt-get install -y chromium chromium-driver || { apt-get update && apt-get install -y chromium chromium-driver; }; } >/dev/null \
      || die "cannot install chromium"
  else
    die "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
  fi
fi
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required"

# --- 1. native core ----------------------------------------------------------------------
if [[ ${WARREN_SDK_NATIVE_TESTED:-} == 1 ]]; then
  # ./dev test ran them in its cargo-test step, with the workspace's tests.
  say "native unit tests of the core: run by ./dev test's cargo-test step"
else
  say "native unit tests of the core"
  (cd "$root" && cargo test -p warren-sdk)
fi

# --- 2. package -------------------------------------------------------------------------
"$here/build.sh"

# --- 3. stack ---------------------------------------------------------------------------
say "building the gateway, the demo service and warren-stack"
# The same build as ./dev test's bins step (the workspace's binaries and tests): a
# narrower one resolves other features and builds lapin, serde and the gateway again.
(cd "$root" && cargo build --workspace --bins --tests)
work="$(mktemp -d)"
state="$work/stack.json"
jwt_state="$work/jwt-stack.json"
direct_state="$work/direct-stack.json"
stack_pids=()
cleanup() {
  for pid in "${stack_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
# start_stack STATE_FILE LOG ARGS...: starts warren-stack in the background and waits for
# its state file.
start_stack() {
  local file="$1" logfile="$2"
  shift 2
  "$target/debug/warren-stack" --layout ephemeral --state-file "$file" "$@" > "$logfile" 2>&1 &
  local pid=$!
  stack_pids+=("$pid")
  for _ in $(seq 1 300); do
    [[ -s "$file" ]] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "warren-stack exited (is RabbitMQ running at ${AMQP_ADDR:-amqp://127.0.0.1:5672/%2f}?)"; }
    sleep 0.2
  done
  cat "$logfile" >&2
  die "warren-stack did not write its state within 60 s"
}
say "starting warren-stack (ephemeral ports, own namespace)"
# voice keeps its messages in a stream of its own (channel streams: a resume names a
# position per stream), of 2 MiB, so that a test can age a session's position out of it.
printf '[channel_options.voice]\nstream_max_age = "1h"\nstream_max_bytes = 2097152\n' > "$work/gateway.toml"
start_stack "$state" "$work/stack.log" --channels chat,voice,tickets,echo,silent,nobody \
  --service-arg=--unanswered=silent --gateway-arg=--config="$work/gateway.toml"
say "starting a second warren-stack in jwt mode (development secret, no leeway)"
start_stack "$jwt_state" "$work/jwt-stack.log" --auth jwt --jwt-leeway-s 0 --no-service
say "starting a third warren-stack whose gateways send replies by direct reply-to"
start_stack "$direct_state" "$work/direct-stack.log" --gateway-arg=--request-replies=direct

# --- 4. browser tests -----------------------------------------------------------------------
say "wasm-bindgen-test in headless Chromium against the stack"
(cd "$here" && \
  WARREN_STACK_STATE_JSON="$(cat "$state")" \
  WARREN_JWT_STACK_STATE_JSON="$(cat "$jwt_state")" \
  WARREN_DIRECT_STACK_STATE_JSON="$(cat "$direct_state")" \
  CHROMEDRIVER="${CHROMEDRIVER:-$(command -v chromedriver)}" \
  WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-120}" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p warren-sdk --target wasm32-unknown-unknown --test browser) \
  || { tail -n 50 "$work/stack.log" "$work/jwt-stack.log" "$work/direct-stack.log" >&2; die "browser tests failed"; }

# --- 5. the package as an app imports it -------------------------------------------------------
say "Node: import the built package and call it"
node_flags=()
if [[ "$(node -e 'process.stdout.write(typeof WebSocket)')" != "function" ]]; then
  node_flags+=(--experimental-websocket) # Node 20: WebSocket is behind a flag
fi
(cd "$here/tests/node" && npm install --no-audit --no-fund --no-package-lock >/dev/null \
  && WARREN_STACK_STATE="$state" node "${node_flags[@]}" --test import.test.mjs) \
  || { tail -n 50 "$work/stack.log" >&2; die "node import test failed"; }
# --- 6. the shipped TypeScript declarations ----------------------------------------------
say "tsc: the shipped .d.ts under strict, skipLibCheck false, lib ES2023 + DOM"
(cd "$here/tests/types" && npm install --no-audit --no-fund --no-package-lock >/dev/null \
  && node node_modules/typescript/bin/tsc -p tsconfig.json) \
  || die "the package's TypeScript declarations do not compile (sdk-wasm/tests/types)"
# --- 7. installed in a fresh app, as a link and from a tarball ------------------------------
say "install routes: a fresh Vite + React app outside the repo (link, tarball, registry; tsc, build, dev, Chromium, Node)"
CHROMIUM_PATH="${CHROMIUM_PATH:-$(command -v chromium || command -v chromium-browser)}" \
  "$here/tests/install/run.sh" "$here/pkg" "$state" \
  || { tail -n 50 "$work/stack.log" >&2; die "an install route failed (sdk-wasm/tests/install)"; }
say "all SDK tests passed"
