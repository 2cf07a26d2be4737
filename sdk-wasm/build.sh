#!/usr/bin/env bash
# Builds the npm package `warren-sdk` into sdk-wasm/pkg/:
#   cargo (wasm32, profile wasm-release, std rebuilt with panic=immediate-abort)
#   → wasm-bindgen --target web → wasm-opt -Oz → esbuild (JS glue bundled + minified)
#   → package.json, README and every file of sdk-wasm/npm/ copied in.
# Installs what it needs (the wasm32 target and rust-src with rustup, wasm-bindgen-cli
# pinned to the crate's wasm-bindgen version, wasm-opt and esbuild from npm into
# target/sdk-wasm-tools/) or fails saying what is missing. Needs node/npm.
# Prints the gzipped size of wasm + JS glue and FAILS over the 30 KB budget (size.sh;
# WARREN_SDK_SIZE_BUDGET=warn only warns, as ./dev demo builds it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
pkg="$here/pkg"
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
# std is rebuilt from source (below), which needs the standard library's source.
sysroot="$(rustc --print sysroot)"
if [[ ! -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]]; then
  say "installing the rust-src component (to rebuild std for the wasm)"
  rustup component add rust-src || die "cannot add the rust-src component (rustup component add rust-src)"
fi
if [[ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wasm_bindgen_version" ]]; then
  say "installing wasm-bindgen-cli $wasm_bindgen_version (cargo install, a few minutes)"
  # No --locked, as ./dev installs it: the registry mirror lacks a crate of the CLI's
  # lock file (webpki-roots, for ureq), and `--locked` failed here.
  cargo install wasm-bindgen-cli --version "$wasm_bindgen_version" \
    || die "cannot install wasm-bindgen-cli $wasm_bindgen_version"
fi
# wasm-opt from binaryen's npm package (a recent release: Debian's binaryen 108 corrupts
# the externref table that wasm-bindgen 0.2.130 emits) and esbuild (minifies the JS
# glue), pinned, installed once into target/.
binaryen_version="132.0.0"
esbuild_version="0.28.2"
tools="$target/sdk-wasm-tools"
wasm_opt="$tools/node_modules/binaryen/bin/wasm-opt"
esbuild="$tools/node_modules/esbuild" # used through its JS API (works without install scripts)
command -v node >/dev/null || die "node (>= 18) is required"
if [[ "$(node "$wasm_opt" --version 2>/dev/null || true)" != *"version ${binaryen_version%%.*}"* ]] \
  || [[ "$(node -p "require(process.argv[1]).version" "$esbuild" 2>/dev/null || true)" != "$esbuild_version" ]]; then
  say "installing binaryen $binaryen_version (wasm-opt) and esbuild $esbuild_version from npm into $tools"
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --no-save --prefix "$tools" \
    "binaryen@$binaryen_version" "esbuild@$esbuild_version" >/dev/null) \
    || die "cannot install binaryen@$binaryen_version and esbuild@$esbuild_version with npm"
fi

# --- build -----------------------------------------------------------------------------
# std is rebuilt with the package (`-Z build-std`, allowed on the stable toolchain by
# RUSTC_BOOTSTRAP, for this one command only) so that a panic is a bare `unreachable`
# (`-C panic=immediate-abort`): no panic messages, locations or `core::fmt` in the
# wasm, about 3 KB gzipped. The SDK never panics on purpose (errors are values); a
# panic would be a bug either way. Its own target dir (target/sdk-wasm-std), since
# these flags would otherwise invalidate the shared wasm32 build of the tests.
std_target="$target/sdk-wasm-std"
say "cargo build (wasm32, profile wasm-release, -Z build-std, panic=immediate-abort)"
(cd "$root" && env -u CARGO_ENCODED_RUSTFLAGS RUSTC_BOOTSTRAP=1 \
  RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none -Zfmt-debug=none" \
  cargo build -p warren-sdk --target wasm32-unknown-unknown --profile wasm-release \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size \
    --target-dir "$std_target")
wasm="$std_target/wasm32-unknown-unknown/wasm-release/warren_sdk.wasm"

say "wasm-bindgen --target web"
rm -rf "$pkg"
wasm-bindgen --target web --out-dir "$pkg" --out-name warren_sdk "$wasm"
rm -f "$pkg/.gitignore"

say "wasm-opt -Oz ($(node "$wasm_opt" --version))"
# The features rustc enables by default for wasm32, named for wasm-opt.
# --flatten --rereloop: binaryen re-derives the control flow before -Oz (about 0.3 KB
# gzipped); --converge: repeat -Oz while it still shrinks (0.1 KB); --low-memory-unused:
# loads and stores may fold constant offsets, valid because rustc links the stack first
# (addresses below 1 KB are the far end of the 1 MB stack), about 0.3 KB gzipped;
# -Oz twice in each round: the second pipeline finds what the first one's changes
# opened up, which --converge alone stops short of (73 B gzipped).
node "$wasm_opt" --flatten --rereloop -Oz -Oz --converge --low-memory-unused \
  --strip-debug --strip-producers \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  "$pkg/warren_sdk_bg.wasm" -o "$pkg/warren_sdk_bg.wasm.opt"
mv "$pkg/warren_sdk_bg.wasm.opt" "$pkg/warren_sdk_bg.wasm"

# Short names for everything the wasm imports and exports (about 1.5 KB gzipped):
# wasm-bindgen names imports `__wbg_<name>_<16 hex digits>` under module
# "./warren_sdk_bg.js" or its snippets' paths, and exports `client_new`, ...; random hex
# compresses badly, and each name is in the wasm and in the glue. wasm-opt renames them
# (one module, one- or two-letter names) and prints the map; the glue is patched to
# match: its import object is rebuilt under the new module name, every `wasm.<export>`
# renamed. The patch checks itself against the module's real import and export lists.
names="$std_target/warren_sdk_names.json"
node "$wasm_opt" --minify-imports-and-exports-and-modules \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  "$pkg/warren_sdk_bg.wasm" -o "$pkg/warren_sdk_bg.wasm.opt" > "$names"
mv "$pkg/warren_sdk_bg.wasm.opt" "$pkg/warren_sdk_bg.wasm"
node -e '
const fs = require("fs");
const [glueFile, namesFile, wasmFile] = process.argv.slice(1);
const fail = (m) => { console.error("[sdk-wasm] error: short names: " + m); process.exit(1); };
const map = JSON.parse(fs.readFileSync(namesFile, "utf8"));
const mod = new WebAssembly.Module(fs.readFileSync(wasmFile));
const modules = [...new Set(WebAssembly.Module.imports(mod).map((i) => i.module))];
if (modules.length !== 1) fail("expected one import module, found " + modules);
const exported = new Set(WebAssembly.Module.exports(mod).map((e) => e.name));
let js = fs.readFileSync(glueFile, "utf8");
const word = (n) => new RegExp("(?<![\\w$])" + n.replace(/\$/g, "\\$") + "(?![\\w$])", "g");
const BG = "./warren_sdk_bg.js";
const others = [];
for (const [m, n, s] of map.imports) {
  if (m === BG) js = js.replace(word(n), s);
  else others.push([m, n, s]);
}
for (const [n, s] of map.exports) js = js.replace(word("wasm." + n), "wasm." + s);
for (const [, used] of js.matchAll(/(?<![\w$])wasm\.([\w$]+)/g)) {
  if (!exported.has(used)) fail("the glue uses wasm." + used + ", which the module does not export");
}
if (!/function __wbg_get_imports\(\) \{/.test(js)) fail("no __wbg_get_imports() in the glue");
js = js.replace("function __wbg_get_imports() {", "function __wbg_get_imports_full() {") + `
function __wbg_get_imports() {
    const full = __wbg_get_imports_full(), merged = full[${JSON.stringify(BG)}];
    for (const [m, n, s] of ${JSON.stringify(others)}) merged[s] = full[m][n];
    return { ${JSON.stringify(modules[0])}: merged };
}
`;
fs.writeFileSync(glueFile, js);
' "$pkg/warren_sdk.js" "$names" "$pkg/warren_sdk_bg.wasm" || die "could not give the imports and exports short names"

# The `WarrenError` class and `isWarrenError` live in a JS module the glue imports
# (src/browser/warren_error.js); the package entry re-exports them, so the class apps
# test with `instanceof` is the one the SDK throws (one copy, bundled below).
error_module="$(cd "$pkg" && find snippets -name warren_error.js | head -n1)"
[[ -n "$error_module" ]] || die "wasm-bindgen did not emit snippets/**/warren_error.js"
printf '\nexport { WarrenError, isWarrenError } from "./%s";\n' "$error_module" >> "$pkg/warren_sdk.js"

# TypeScript, types only (the JS and the wasm are untouched); the build fails when a
# wasm-bindgen upgrade changes what is patched, so it is looked at again:
# - `InitOutput` (what `init()` / `initSync()` resolve with) listed the wasm's exports
#   by wasm-bindgen's names (`memory`, `client_new`, ...), which the renaming above
#   replaced: it becomes opaque (`unknown`), and warren_sdk_bg.wasm.d.ts, which declared
#   the same names as the .wasm's ES module exports, declares none.
# - `[Symbol.dispose](): void` (wasm-bindgen's, on Client and Subscription) stays, so
#   `using client = new Client(...)` compiles; it needs `Symbol.dispose` and the global
#   `Disposable`, which only lib `esnext.disposable` declares: the .d.ts declares both
#   as @types/node does (the same declarations as the lib's, so they merge with it), and
#   compiles under any lib from ES2020 on (test.sh checks it with tsc, lib ES2023 + DOM).
# - `writeAndWait` takes a `RequestEnvelope` (an Envelope without `distribution`: a
#   request goes to the service alone, and the SDK does not send one).
# - Under `exactOptionalPropertyTypes`, the optional fields of the options and
#   envelopes accept `undefined`, which the SDK reads as absent.
node -e '
const fs = require("fs");
const [dts, wasmDts] = process.argv.slice(1);
const fail = (m) => { console.error("[sdk-wasm] error: .d.ts: " + m); process.exit(1); };
let ts = fs.readFileSync(dts, "utf8");
const swap = (from, to) => {
  const n = typeof from === "string" ? ts.split(from).length - 1 : (ts.match(new RegExp(from.source, "g")) || []).length;
  if (n !== 1) fail("expected one " + from + ", found " + n);
  ts = ts.replace(from, to);
};
swap(/export interface InitOutput \{\n[^}]*\n\}\n/,
  "/** What `init()` and `initSync()` resolve with: the wasm module'"'"'s exports, renamed by the build (not an API). */\nexport type InitOutput = unknown;\n");
if ((ts.match(/^\s*\[Symbol\.dispose\]\(\): void;$/gm) || []).length !== 2) fail("expected [Symbol.dispose]() on Client and Subscription");
ts += `
declare global {
    // As lib esnext.disposable (and @types/node) declare them, for apps whose lib lacks it.
    interface SymbolConstructor {
        readonly dispose: unique symbol;
    }
    interface Disposable {
        [Symbol.dispose](): void;
    }
}
`;
swap("writeAndWait<R = unknown, M = unknown>(envelope: Envelope<M>, options?: WaitOptions): Promise<R>;",
  "writeAndWait<R = unknown, M = unknown>(envelope: RequestEnvelope<M>, options?: WaitOptions): Promise<R>;");
swap("/** Options of `writeAndWait`. */", `/**
 * A request (\`writeAndWait\`): an \`Envelope\` without \`distribution\`, since a request
 * goes to the service alone (the SDK sends no distribution with it).
 */
export type RequestEnvelope<M = unknown> = Omit<Envelope<M>, "distribution">;

/** Options of \`writeAndWait\`. */`);
swap("reconnect?: { minDelayMs?: number; maxDelayMs?: number };",
  "reconnect?: { minDelayMs?: number | undefined; maxDelayMs?: number | undefined } | undefined;");
const optional = {
  ClientOptions: ["token", "getToken", "requestTimeoutMs", "connectTimeoutMs", "handshakeTimeoutMs", "channels", "outboxLimit"],
  Distribution: ["broadcast", "groups", "direct"],
  Envelope: ["subject", "distribution", "headers"],
  WaitOptions: ["timeoutMs"],
  SubscribeOptions: ["broadcast", "groups", "direct", "topic"],
};
for (const [name, fields] of Object.entries(optional)) {
  const m = new RegExp("export interface " + name + "(<[^>]*>)? \\{\\n[\\s\\S]*?\\n\\}\\n").exec(ts);
  if (!m) fail("no interface " + name);
  let block = m[0];
  for (const f of fields) {
    const re = new RegExp("^(\\s*" + f + "\\?: )(.+);$", "m");
    const fm = re.exec(block);
    if (!fm) fail(name + " has no optional " + f);
    block = block.replace(re, (_, head, type) => head + (type.includes("=>") ? "(" + type + ")" : type) + " | undefined;");
  }
  ts = ts.slice(0, m.index) + block + ts.slice(m.index + m[0].length);
}
fs.writeFileSync(dts, ts);
if (!/^export const memory: WebAssembly\.Memory;$/m.test(fs.readFileSync(wasmDts, "utf8"))) fail("warren_sdk_bg.wasm.d.ts has no memory export");
fs.writeFileSync(wasmDts, `/* tslint:disable */
/* eslint-disable */
// The .wasm'"'"'s exports have short names given by the build (not an API): use the JS module.
export {};
`);
' "$pkg/warren_sdk.d.ts" "$pkg/warren_sdk_bg.wasm.d.ts" || die "could not patch the TypeScript declarations"
grep -q 'becomes `disconnected`' "$pkg/warren_sdk.d.ts" || die "the JSDoc of close() lost its end in warren_sdk.d.ts"

# Shorter wording for wasm-bindgen's three console warnings (about 0.1 KB gzipped: their
# long sentences are the least compressible part of the glue; same meaning), and no
# polyfill of `TextEncoder.encodeInto`, which every browser of the ES2020 target and
# Node >= 12 have. The build fails when a wasm-bindgen upgrade changes these lines, so
# they are looked at again.
node -e '
const fs = require("fs");
const file = process.argv[1];
let js = fs.readFileSync(file, "utf8");
for (const [from, to] of [
  ["\"`WebAssembly.instantiateStreaming` failed because your server does not serve Wasm with `application/wasm` MIME type. Falling back to `WebAssembly.instantiate` which is slower. Original error:\\n\"",
   "\"warren-sdk: the .wasm is not served as application/wasm; loading it the slower way:\""],
  ["\x27using deprecated parameters for `initSync()`; pass a single object instead\x27",
   "\"warren-sdk: pass initSync({ module })\""],
  ["\x27using deprecated parameters for the initialization function; pass a single object instead\x27",
   "\"warren-sdk: pass init({ module_or_path })\""],
  [`if (!(\x27encodeInto\x27 in cachedTextEncoder)) {
    cachedTextEncoder.encodeInto = function (arg, view) {
        const buf = cachedTextEncoder.encode(arg);
        view.set(buf);
        return {
            read: arg.length,
            written: buf.length
        };
    };
}`, ""],
]) {
  if (!js.includes(from)) { console.error("[sdk-wasm] error: the glue has no " + from); process.exit(1); }
  js = js.replace(from, to);
}
fs.writeFileSync(file, js);
' "$pkg/warren_sdk.js" || die "could not shorten wasm-bindgen's warnings in the glue"

# The JS glue ships minified, with the JS snippets of `#[wasm_bindgen(inline_js)]`
# bundled in (one file, no snippets/ folder). The JSDoc stays in warren_sdk.d.ts,
# which is what editors read. `new URL("warren_sdk_bg.wasm", import.meta.url)` is
# kept as is, so bundlers (Vite) still find the wasm.
say "esbuild: bundle and minify the JS glue"
node -e '
const [esbuild, input, outfile] = process.argv.slice(1);
require(esbuild).buildSync({ entryPoints: [input], outfile, bundle: true, minify: true,
  format: "esm", target: "es2020", logLevel: "error" });
' "$esbuild" "$pkg/warren_sdk.js" "$pkg/warren_sdk.min.js" || die "esbuild could not minify the JS glue"
mv "$pkg/warren_sdk.min.js" "$pkg/warren_sdk.js"
rm -rf "$pkg/snippets"
grep -q 'new URL("warren_sdk_bg.wasm",import.meta.url)' "$pkg/warren_sdk.js" \
  || die "the minified glue lost new URL(\"warren_sdk_bg.wasm\", import.meta.url)"

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
"$here/size.sh" "$pkg"
say "warren-sdk $version ready in $pkg"
