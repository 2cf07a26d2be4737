// A throwaway npm registry on 127.0.0.1 that publishes one package: the tarball `npm
// pack` made. Answers its packument (GET /warren-sdk) and the tarball; any other package
// is redirected to the npm registry (npm asks about `react`, the optional peer). Prints
// its URL, then serves until killed. Usage: node registry.mjs TARBALL
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { gunzipSync } from "node:zlib";

const tarball = readFileSync(process.argv[2]);

// package/package.json out of the (ustar) tarball: 512-byte headers, name at 0..100,
// size in octal at 124..136, contents padded to 512 bytes.
function packageJson(tgz) {
  const tar = gunzipSync(tgz);
  for (let off = 0; off + 512 <= tar.length; ) {
    const name = tar.subarray(off, off + 100).toString("utf8").replace(/\0.*$/s, "");
    const size = parseInt(tar.subarray(off + 124, off + 136).toString("utf8").trim() || "0", 8);
    if (name === "package/package.json") {
      return JSON.parse(tar.subarray(off + 512, off + 512 + size).toString("utf8"));
    }
    off += 512 + Math.ceil(size / 512) * 512;
    if (name === "") break;
  }
  throw new Error("no package/package.json in the tarball");
}

const manifest = packageJson(tarball);
const file = `${manifest.name}-${manifest.version}.tgz`;
const server = createServer((req, res) => {
  const base = `http://127.0.0.1:${server.address().port}`;
  const path = decodeURIComponent(req.url.split("?")[0]);
  if (req.method === "GET" && path === `/${manifest.name}`) {
    console.error(`registry: packument of ${manifest.name}@${manifest.version}`);
    const version = {
      ...manifest,
      _id: `${manifest.name}@${manifest.version}`,
      dist: {
        tarball: `${base}/${manifest.name}/-/${file}`,
        shasum: createHash("sha1").update(tarball).digest("hex"),
        integrity: `sha512-${createHash("sha512").update(tarball).digest("base64")}`,
      },
    };
    res.writeHead(200, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        name: manifest.name,
        "dist-tags": { latest: manifest.version },
        versions: { [manifest.version]: version },
      }),
    );
  } else if (req.method === "GET" && path === `/${manifest.name}/-/${file}`) {
    console.error(`registry: ${file}`);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    res.end(tarball);
  } else if (req.method === "GET" && !path.startsWith(`/${manifest.name}/`)) {
    res.writeHead(302, { location: `https://registry.npmjs.org${req.url}` });
    res.end();
  } else {
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"error":"not found"}');
  }
});
server.listen(0, "127.0.0.1", () => {
  console.log(`http://127.0.0.1:${server.address().port}/`);
});
