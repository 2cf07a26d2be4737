//! The SDK's error: a registry code (from `warren_protocol::ErrorCode`) and a message.
//! In JavaScript it becomes a `WarrenError` with `code`, `message` and `retry`.

use warren_protocol::ErrorCode;

/// Why a write, request, subscription or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// Registry code, stable across versions (`timeout`, `no_route`, `closed`, ...).
    pub code: ErrorCode,
    /// What happened, for humans.
    pub message: String,
}

impl ClientError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }

    /// Whether retrying the same operation later can succeed (from the registry).
    pub fn retry(&self) -> bool {
        self.code.retry()
    }
}
