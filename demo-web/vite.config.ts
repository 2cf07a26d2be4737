// Vite configuration of the Warren demo page.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  plugins: [react()],
  resolve: {
    // `warren-sdk` is a `file:` dependency (a symlink to sdk-wasm/pkg); its React
    // bindings import "react", which must resolve to this app's copy.
    dedupe: ["react", "react-dom"],
  },
  optimizeDeps: {
    // The SDK loads its .wasm with `new URL(..., import.meta.url)`: keep it unbundled.
    exclude: ["warren-sdk"],
    // ...and pre-bundle what its React bindings import, so the dev server does not
    // discover it late and reload the page.
    include: ["react", "react-dom", "react-dom/client", "react/jsx-runtime", "react/jsx-dev-runtime"],
  },
  server: {
    host: true,
    port: 3000,
    // The SDK package lives outside this folder (sdk-wasm/pkg, linked by npm).
    fs: { allow: [".", "../sdk-wasm/pkg"] },
  },
  preview: { host: true, port: 3000 },
  build: { target: "es2022", sourcemap: true },
});
