//! Errors as JavaScript sees them: instances of the `WarrenError` class (a real `Error`:
//! stack, console rendering) with the registry `code`, the `retry` flag and, for writes
//! and requests, the frame `id`; for a `session_expired` about a channel's own stream,
//! that channel (`stream`). The class lives in `warren_error.js`, which build.sh
//! re-exports from the package entry with `isWarrenError`.

use warren_protocol::ErrorCode;
use wasm_bindgen::prelude::*;

use crate::error::ClientError;

#[wasm_bindgen(module = "/src/browser/warren_error.js")]
extern "C" {
    #[wasm_bindgen(js_name = WarrenError)]
    type JsWarrenError;

    #[wasm_bindgen(constructor, js_class = "WarrenError")]
    fn new(message: &str, code: &str, retry: bool, id: &JsValue, stream: &JsValue)
        -> JsWarrenError;

    /// `value instanceof WarrenError` (the package's `isWarrenError`).
    #[wasm_bindgen(js_name = isWarrenError)]
    pub fn is_warren_error(value: &JsValue) -> bool;
}

/// Builds the JS `WarrenError` for `err`.
pub fn to_js(err: &ClientError) -> JsValue {
    let text = |s: &Option<String>| s.as_deref().map_or(JsValue::UNDEFINED, JsValue::from_str);
    JsWarrenError::new(
        &err.message,
        err.code.as_str(),
        err.retry(),
        &text(&err.id),
        &text(&err.stream),
    )
    .into()
}

/// A `WarrenError` with code `invalid`, for bad arguments.
pub fn invalid(message: impl Into<String>) -> JsValue {
    to_js(&ClientError::new(ErrorCode::Invalid, message))
}
