//! Reading and writing plain JavaScript objects with `Reflect`: the few typed getters
//! the codec and the option parsers need (smaller in wasm than a serde deserializer).
//! Errors name the offending field, for the app's `invalid` errors.

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::text::concat;

/// `target[key]` (`undefined` when absent or `target` is not an object).
pub fn get(target: &JsValue, key: &str) -> JsValue {
    if target.is_object() {
        Reflect::get(target, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

/// `target[key] = value`.
pub fn set(target: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

/// `target[key] = value` when `value` is not `undefined`.
pub fn set_defined(target: &Object, key: &str, value: &JsValue) {
    if !value.is_undefined() {
        set(target, key, value);
    }
}

/// Why a field could not be read: names the field.
pub type FieldError = String;

/// "`key`" followed by `problem` (which starts with the closing backtick).
fn field(key: &str, problem: &str) -> FieldError {
    concat(&["`", key, problem])
}

fn absent(v: &JsValue) -> bool {
    v.is_undefined() || v.is_null()
}

/// An optional string field.
///
/// # Errors
/// When present but not a string.
pub fn opt_str(target: &JsValue, key: &str) -> Result<Option<String>, FieldError> {
    let v = get(target, key);
    if absent(&v) {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| field(key, "` must be a string"))
}

/// A required string field.
///
/// # Errors
/// When absent or not a string.
pub fn req_str(target: &JsValue, key: &str) -> Result<String, FieldError> {
    opt_str(target, key)?.ok_or_else(|| field(key, "` is required"))
}

/// An optional non-negative integer field (milliseconds, counts, sequence numbers).
///
/// # Errors
/// When present but not a non-negative number.
pub fn opt_u64(target: &JsValue, key: &str) -> Result<Option<u64>, FieldError> {
    let v = get(target, key);
    if absent(&v) {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n >= 0.0 && n.is_finite() => Ok(Some(n as u64)),
        _ => Err(field(key, "` must be a non-negative number")),
    }
}

/// An optional boolean field.
///
/// # Errors
/// When present but not a boolean.
pub fn opt_bool(target: &JsValue, key: &str) -> Result<Option<bool>, FieldError> {
    let v = get(target, key);
    if absent(&v) {
        return Ok(None);
    }
    v.as_bool()
        .map(Some)
        .ok_or_else(|| field(key, "` must be a boolean"))
}

/// An optional array-of-strings field (empty when absent).
///
/// # Errors
/// When present but not an array of strings.
pub fn str_array(target: &JsValue, key: &str) -> Result<Vec<String>, FieldError> {
    let v = get(target, key);
    if absent(&v) {
        return Ok(Vec::new());
    }
    let bad = || field(key, "` must be an array of strings");
    if !Array::is_array(&v) {
        return Err(bad());
    }
    let array = Array::from(&v);
    let mut out = Vec::new();
    for i in 0..array.length() {
        out.push(array.get(i).as_string().ok_or_else(bad)?);
    }
    Ok(out)
}

/// A JS array of strings.
pub fn to_array(items: &[String]) -> Array {
    items.iter().map(|s| JsValue::from_str(s)).collect()
}
