// WarrenError, the class of every rejection and `error` event of the SDK. Imported by
// the wasm glue (error.rs) and re-exported from the package entry by build.sh, so
// `instanceof WarrenError` holds for what the SDK throws. Types: types.rs.
export class WarrenError extends Error {
  constructor(message, code, retry, id, stream) {
    super(message);
    this.name = "WarrenError";
    this.code = code;
    this.retry = retry;
    if (id != null) this.id = id;
    if (stream != null) this.stream = stream;
  }
}
export function isWarrenError(e) { return e instanceof WarrenError; }
