#!/usr/bin/env bash
# Installs the built package into a fresh Vite + React + TypeScript app OUTSIDE the repo
# (a mktemp dir), as a user would, and checks every route against a running stack:
#
#   routes:  link     `npm install <path to sdk-wasm/pkg>` (npm makes a symlink), with
#                     the README's one line `resolve: { preserveSymlinks: true }`
#            tarball  `npm pack` + `npm install ./warren-sdk-X.tgz`, no config at all
#            registry `npm install warren-sdk@X --registry <registry.mjs>`: a throwaway
#                     registry on 127.0.0.1 publishing that tarball (other packages are
#                     redirected to the npm registry), no config at all
#   checks:  tsc --noEmit (strict, skipLibCheck false), vite build, the built app in
#            headless Chromium (vite preview) reaching `connected`, the Vite dev server
#            in Chromium reaching `connected` with no HTTP error (e.g. a 403 for the
#            .wasm), and Node importing the package and connecting.
#
# Also prints what the SDK adds to an app's build, gzipped: the baseline page built
# without warren-sdk, with it and its React bindings, and with the package alone, which
# must stay within the 30 KB budget there too (app/baseline/*.tsx). The app's dependencies (pinned, app/package-lock.json) are
# installed once with `npm ci` (npm's own cache); routes swap only warren-sdk.
#
# Usage: run.sh PKG_DIR STACK_STATE_JSON   (sdk-wasm/test.sh calls it with its stack)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pkg="$(cd "${1:?usage: run.sh PKG_DIR STACK_STATE_JSON}" && pwd)"
state="$(cd "$(dirname "${2:?usage: run.sh PKG_DIR STACK_STATE_JSON}")" && pwd)/$(basename "$2")"
say() { printf '\033[1m[sdk-wasm install]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
[[ -f "$pkg/package.json" && -f "$pkg/warren_sdk_bg.wasm" ]] || die "$pkg is not a built package (run sdk-wasm/build.sh)"
[[ -s "$state" ]] || die "no stack state in $state"

work="$(mktemp -d)"
app="$work/app"
server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
registry_pid=""
cleanup() {
  stop_server
  [[ -z "$registry_pid" ]] || kill -TERM "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

results=()
result() { results+=("$(printf '%-8s %-12s %s' "$1" "$2" "$3")"); }

cp -R "$here/app" "$app"
cd "$app"
say "npm ci: react, react-dom, vite, @vitejs/plugin-react, typescript, @types/react, playwright-core (pinned)"
npm ci --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null || die "npm ci failed in $app"
urls="$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  process.stdout.write(s.gateways.map((g) => g.urls.all).join(","))' "$state")"
free_port() { node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
  process.stdout.write(String(s.address().port)); s.close(); })'; }

# serve MODE LOG: starts `vite` (dev) or `vite preview` on a free port of 127.0.0.1 and
# sets $server_url once it answers.
serve() {
  local mode="$1" log="$2" port
  port="$(free_port)"
  if [[ "$mode" == dev ]]; then
    node node_modules/vite/bin/vite.js --host 127.0.0.1 --port "$port" --strictPort >"$log" 2>&1 &
  else
    node node_modules/vite/bin/vite.js preview --host 127.0.0.1 --port "$port" --strictPort >"$log" 2>&1 &
  fi
  server_pid=$!
  server_url="http://127.0.0.1:$port/"
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$server_url" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; die "vite $mode exited"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "vite $mode did not answer within 10 s"
}

# gz_total DIR EXT_REGEX: the gzipped size (level 9, each file on its own, as a server
# sends them) of the files under DIR whose names match EXT_REGEX.
gz_total() {
  node -e 'const fs = require("fs"), path = require("path"), zlib = require("zlib");
  let total = 0;
  const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) walk(p);
    else if (new RegExp(process.argv[2]).test(e.name)) total += zlib.gzipSync(fs.readFileSync(p), { level: 9 }).length;
  } };
  walk(process.argv[1]); process.stdout.write(String(total));' "$1" "$2"
}

# --- size baseline: the same app without warren-sdk ---------------------------------------
cp src/main.tsx "$work/main.tsx"
cp baseline/main.tsx src/main.tsx
node node_modules/vite/bin/vite.js build --logLevel error --outDir "$work/dist-baseline" >/dev/null \
  || die "vite build of the baseline app (no warren-sdk) failed"
cp "$work/main.tsx" src/main.tsx
baseline_js_gz="$(gz_total "$work/dist-baseline" '\.js$')"
[[ -z "$(find "$work/dist-baseline" -name '*.wasm')" ]] || die "the baseline app has a .wasm"

say "npm pack $pkg"
tarball="$work/$(npm pack "$pkg" --pack-destination "$work" --loglevel=error | tail -n1)"
[[ -f "$tarball" ]] || die "npm pack did not write a tarball"

for route in link tarball registry; do
  say "route $route"
  if [[ "$route" == link ]]; then
    npm install --no-audit --no-fund --prefer-offline --loglevel=error "$pkg" >/dev/null || die "npm install $pkg failed"
    [[ -L node_modules/warren-sdk ]] || die "npm did not install $pkg as a link"
    # The README's one line for a linked package (see "Install").
    sed -i 's|^  plugins: \[react()\],$|&\n  resolve: { preserveSymlinks: true },|' vite.config.ts
    grep -q 'preserveSymlinks: true' vite.config.ts || die "could not add preserveSymlinks to vite.config.ts"
  elif [[ "$route" == tarball ]]; then
    npm install --no-audit --no-fund --prefer-offline --loglevel=error "$tarball" >/dev/null || die "npm install $tarball failed"
    [[ -d node_modules/warren-sdk && ! -L node_modules/warren-sdk ]] || die "the tarball was not installed as a folder"
    cp "$here/app/vite.config.ts" vite.config.ts
  else
    npm uninstall --no-audit --no-fund --loglevel=error warren-sdk >/dev/null || die "npm uninstall warren-sdk failed"
    [[ ! -e node_modules/warren-sdk ]] || die "npm uninstall left node_modules/warren-sdk"
    node "$here/registry.mjs" "$tarball" >"$work/registry.url" 2>"$work/registry.log" &
    registry_pid=$!
    for _ in $(seq 1 50); do [[ -s "$work/registry.url" ]] && break; sleep 0.1; done
    registry="$(head -n1 "$work/registry.url")"
    [[ -n "$registry" ]] || die "the throwaway registry did not start"
    version="$(node -p 'require(process.argv[1]).version' "$pkg/package.json")"
    npm install --no-audit --no-fund --prefer-offline --loglevel=error --registry="$registry" "warren-sdk@$version" >/dev/null \
      || { cat "$work/registry.log" >&2; die "npm install warren-sdk@$version from $registry failed"; }
    grep -q 'registry: packument' "$work/registry.log" || die "npm did not ask the throwaway registry for warren-sdk"
    [[ -d node_modules/warren-sdk && ! -L node_modules/warren-sdk ]] || die "the registry install is not a folder"
    kill -TERM "$registry_pid" 2>/dev/null || true
    registry_pid=""
  fi
  rm -rf dist node_modules/.vite

  node node_modules/typescript/bin/tsc --noEmit -p tsconfig.json || die "$route: tsc --noEmit failed"
  result "$route" tsc ok

  node node_modules/vite/bin/vite.js build --logLevel error >/dev/null || {
    node node_modules/vite/bin/vite.js build >&2 || true
    die "$route: vite build failed"
  }
  result "$route" "vite build" ok

  serve preview "$work/preview-$route.log"
  node connect.mjs "$server_url?urls=$urls" 30000 || die "$route: the built app (vite preview) did not connect"
  stop_server
  result "$route" "preview" "connected in Chromium"

  serve dev "$work/dev-$route.log"
  node connect.mjs "$server_url?urls=$urls" 30000 || { cat "$work/dev-$route.log" >&2; die "$route: the app on the Vite dev server did not connect"; }
  stop_server
  result "$route" "dev server" "connected in Chromium"

  node_flags=()
  if [[ "$(node -e 'process.stdout.write(typeof WebSocket)')" != "function" ]]; then
    node_flags+=(--experimental-websocket) # Node 20: WebSocket is behind a flag
  fi
  node "${node_flags[@]}" node-connect.mjs "$state" || die "$route: Node could not import the package and connect"
  result "$route" node "connected"

  if [[ "$route" == tarball ]]; then
    # Sizes: the baseline page plus the least use of warren-sdk with its React bindings
    # (baseline/react.tsx) and without them (baseline/core.tsx: the package alone, what
    # the 30 KB budget covers).
    cp src/main.tsx "$work/main-full.tsx"
    for variant in react core; do
      cp "baseline/$variant.tsx" src/main.tsx
      node node_modules/vite/bin/vite.js build --logLevel error --outDir "$work/dist-$variant" >/dev/null \
        || die "vite build of the size variant baseline/$variant.tsx failed"
    done
    cp "$work/main-full.tsx" src/main.tsx
    wasm_gz="$(gz_total "$work/dist-react" '\.wasm$')"
    js_gz=$(( $(gz_total "$work/dist-react" '\.js$') - baseline_js_gz ))
    core_js_gz=$(( $(gz_total "$work/dist-core" '\.js$') - baseline_js_gz ))
    core_gz=$(( $(gz_total "$work/dist-core" '\.wasm$') + core_js_gz ))
  fi
done

[[ -n "${wasm_gz:-}" ]] || die "no size measured"
for line in "${results[@]}"; do printf '  %s\n' "$line" >&2; done
printf 'warren-sdk adds %d B gzipped to a fresh Vite + React app build: wasm %d B + JS %d B (warren-sdk and warren-sdk/react, bundled into the app chunk; gzip -9 per file)\n' \
  "$((wasm_gz + js_gz))" "$wasm_gz" "$js_gz"
printf 'of which the package alone (wasm + JS glue, no warren-sdk/react) %d B (JS %d B), budget %d B; warren-sdk/react %d B\n' \
  "$core_gz" "$core_js_gz" "$((30 * 1024))" "$((wasm_gz + js_gz - core_gz))"
(( core_gz <= 30 * 1024 )) || die "warren-sdk adds $core_gz B gzipped to the fresh app, over the 30 KB budget"
say "every install route works (${SECONDS} s)"
