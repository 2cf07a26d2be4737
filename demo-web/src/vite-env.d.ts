/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** Comma-separated gateway WebSocket URLs, primary first. */
  readonly VITE_WARREN_URLS?: string;
  /** Base URL of warren-stack's control API (kill/start gateways and the service). */
  readonly VITE_WARREN_CONTROL?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
