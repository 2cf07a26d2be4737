// A fresh app's Vite config, as `npm create vite` writes it (run.sh adds the README's
// one line for the link route).
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  plugins: [react()],
});
