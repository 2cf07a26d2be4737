#!/usr/bin/env bash
# Builds the npm package `warren-sdk` into sdk-wasm/pkg/:
#   cargo (wasm32, profile wasm-release) → wasm-bindgen --target web → wasm-opt -Oz
#   → package.json, README and every file of sdk-wasm/npm/ copied in.
# Installs what it needs (the wasm32 target, wasm-bindgen-cli pinned to the crate's
# wasm-bindgen version, wasm-opt from binaryen's npm package) or fails saying what is
# missing. Needs node/npm.
# Prints the gzipped size of wasm + JS glue and fails over the 30 KB budget.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
pkg="$here/pkg"
budget=$((30 * 1024))
wasm_bindgen_version="0.2.130" # keep equal to `wasm-bindgen = "=…"` in sdk-wasm/Cargo.toml

say() { printf '\033[1m[sdk-wasm]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

grep -q "wasm-bindgen = \"=$wasm_bindgen_version\"" "$here/Cargo.toml" \
  || die "build.sh pins wasm-bindgen $wasm_bindgen_version but sdk-wasm/Cargo.toml does not"

# --- tools ---------------------------------------------------------------------------
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown || die "cannot add the wasm32-unknown-unknown target"
fi
if [[ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wasm_bindgen_version" ]]; then
  say "installing wasm-bindgen-cli $wasm_bindgen_version (cargo install, a few minutes)"
  cargo install --locked wasm-bindgen-cli --version "$wasm_bindgen_version" \
    || die "cannot install wasm-bindgen-cli $wasm_bindgen_version"
fi
# wasm-opt from binaryen's npm package (a recent release: Debian's binaryen 108 corrupts
# the externref table that wasm-bindgen 0.2.130 emits). Installed once into target/.
binaryen_version="132.0.0"
tools="$root/target/sdk-wasm-tools"
wasm_opt="$tools/node_modules/binaryen/bin/wasm-opt"
command -v node >/dev/null || die "node (>= 18) is required"
if [[ "$(node "$wasm_opt" --version 2>/dev/null || true)" != *"version ${binaryen_version%%.*}"* ]]; then
  say "installing binaryen $binaryen_version (wasm-opt) from npm into $tools"
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --no-save --prefix "$tools" "binaryen@$binaryen_version" >/dev/null) \
    || die "cannot install binaryen@$binaryen_version with npm"
fi

# --- build -----------------------------------------------------------------------------
say "cargo build (wasm32, profile wasm-release)"
(cd "$root" && cargo build -p warren-sdk --target wasm32-unknown-unknown --profile wasm-release)
wasm="$root/target/wasm32-unknown-unknown/wasm-release/warren_sdk.wasm"

say "wasm-bindgen --target web"
rm -rf "$pkg"
wasm-bindgen --target web --out-dir "$pkg" --out-name warren_sdk "$wasm"
rm -f "$pkg/.gitignore"

say "wasm-opt -Oz ($(node "$wasm_opt" --version))"
# The features rustc enables by default for wasm32, named for wasm-opt.
node "$wasm_opt" -Oz --strip-debug --strip-producers \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  "$pkg/warren_sdk_bg.wasm" -o "$pkg/warren_sdk_bg.wasm.opt"
mv "$pkg/warren_sdk_bg.wasm.opt" "$pkg/warren_sdk_bg.wasm"

# The JSDoc that wasm-bindgen copies into the JS glue is also in warren_sdk.d.ts, which
# is what editors read: drop it from the .js (about 0.8 KB gzipped).
node -e '
const fs = require("fs"), f = process.argv[1];
fs.writeFileSync(f, fs.readFileSync(f, "utf8").replace(/^[ \t]*\/\*\*[\s\S]*?\*\/[ \t]*\n/gm, ""));
' "$pkg/warren_sdk.js"
node --check "$pkg/warren_sdk.js" || die "the JS glue no longer parses after stripping comments"

# --- package ---------------------------------------------------------------------------
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
[[ -n "$version" ]] || die "cannot read the workspace version from Cargo.toml"
for f in "$here"/npm/*; do
  case "$(basename "$f")" in
    package.json) sed "s/\"version\": \"0.0.0-dev\"/\"version\": \"$version\"/" "$f" > "$pkg/package.json" ;;
    *) cp -R "$f" "$pkg/" ;;
  esac
done

# --- size ------------------------------------------------------------------------------
gz() { gzip -9 -c "$1" | wc -c; }
wasm_gz=$(gz "$pkg/warren_sdk_bg.wasm")
js_gz=$(gz "$pkg/warren_sdk.js")
total=$((wasm_gz + js_gz))
printf 'warren-sdk %s: wasm %d B (%d B gzipped) + JS glue %d B (%d B gzipped) = %d B gzipped (%.1f KB; budget 30 KB)\n' \
  "$version" "$(wc -c < "$pkg/warren_sdk_bg.wasm")" "$wasm_gz" "$(wc -c < "$pkg/warren_sdk.js")" "$js_gz" \
  "$total" "$(awk "BEGIN { print $total / 1024 }")"
if (( total > budget )); then
  if [[ "${WARREN_SIZE_STRICT:-0}" == 1 ]]; then
    die "over the size budget: $total B gzipped > $budget B"
  fi
  say "WARNING: over the size budget ($total B gzipped > $budget B); WARREN_SIZE_STRICT=1 makes this fatal"
fi
say "package ready in $pkg"
