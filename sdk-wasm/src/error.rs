//! The SDK's error: a registry code (from `warren_protocol::ErrorCode`), a message and
//! the id of the failed operation. In JavaScript it becomes an instance of the
//! `WarrenError` class with `code`, `message`, `retry`, `id` and `stream`.

use warren_protocol::ErrorCode;

/// Why a write, request, subscription or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// Registry code, stable across versions (`timeout`, `no_route`, `closed`, ...).
    pub code: ErrorCode,
    /// What happened, for humans.
    pub message: String,
    /// The frame id of the write or request that failed (`None` for errors not tied to
    /// one: connection failures, `connect()`, events).
    pub id: Option<String>,
    /// The channel whose own stream a `session_expired` notice is about (`None`: the
    /// outbound stream, or an error about no stream).
    pub stream: Option<String>,
}

impl ClientError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
            id: None,
            stream: None,
        }
    }

    /// The same error, naming the operation `id` that failed.
    pub fn with_id(mut self, id: String) -> Self {
        self.id = Some(id);
        self
    }

    /// Whether retrying the same operation later can succeed (from the registry).
    pub fn retry(&self) -> bool {
        self.code.retry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's wire names, `unknown` (a newer peer's code) last.
    fn registry() -> Vec<&'static str> {
        let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        codes.push(ErrorCode::Unknown.as_str());
        codes
    }

    #[test]
    fn the_typescript_error_code_union_lists_exactly_the_registry_codes_in_order() {
        let ts = include_str!("browser/types.rs");
        let start = ts
            .find("export type ErrorCode =")
            .expect("types.rs declares ErrorCode");
        let end = start + ts[start..].find(';').expect("the union ends with `;`");
        let listed: Vec<&str> = ts[start..end].split('"').skip(1).step_by(2).collect();
        assert_eq!(
            listed,
            registry(),
            "update `ErrorCode` in src/browser/types.rs"
        );
    }

    #[test]
    fn the_readme_error_table_names_every_registry_code() {
        let readme = include_str!("../../README.md");
        let table = &readme[readme.find("### Errors").expect("README has ### Errors")..];
        for code in registry() {
            assert!(
                table.contains(&["`", code, "`"].concat()),
                "README's SDK error table lacks `{code}`"
            );
        }
    }

    #[test]
    fn an_error_keeps_the_registry_retry_flag_and_the_operation_id() {
        let err = ClientError::new(ErrorCode::TooLarge, "big").with_id("p-7".into());
        assert!(!err.retry());
        assert_eq!(err.id.as_deref(), Some("p-7"));
        assert!(ClientError::new(ErrorCode::Timeout, "slow").retry());
    }
}
