//! Errors as JavaScript sees them: a real `Error` (stack, console rendering) named
//! `WarrenError`, with the registry `code` and the `retry` flag.

use js_sys::Reflect;
use warren_protocol::ErrorCode;
use wasm_bindgen::JsValue;

use crate::error::ClientError;

/// Builds the JS `WarrenError` for `err`.
pub fn to_js(err: &ClientError) -> JsValue {
    let e = js_sys::Error::new(&err.message);
    e.set_name("WarrenError");
    let _ = Reflect::set(&e, &"code".into(), &err.code.as_str().into());
    let _ = Reflect::set(&e, &"retry".into(), &JsValue::from_bool(err.retry()));
    e.into()
}

/// A `WarrenError` with code `invalid`, for bad arguments.
pub fn invalid(message: impl Into<String>) -> JsValue {
    to_js(&ClientError::new(ErrorCode::Invalid, message))
}
