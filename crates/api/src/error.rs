//! The upstream `error` object (`org.zstack.header.errorcode.ErrorCode`).

use crate::codes::Code;
use serde::{Deserialize, Serialize};

/// The error object as it goes on the wire: `code`, the code's fixed `description`,
/// the per-occurrence `details`, and optionally a nested `cause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCode {
    pub code: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elaboration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<ErrorCode>>,
}

/// Upstream truncates `details` to this many characters.
pub const MAX_DETAILS: usize = 4096;

impl ErrorCode {
    pub fn new(code: Code, details: impl Into<String>) -> Self {
        let mut details: String = details.into();
        if details.chars().count() > MAX_DETAILS {
            details = details.chars().take(MAX_DETAILS).collect();
        }
        ErrorCode {
            code: code.code.to_string(),
            description: code.description.to_string(),
            details: Some(details),
            elaboration: None,
            cause: None,
        }
    }

    /// This error wrapping `cause` (upstream `operr(cause, ...)`).
    pub fn with_cause(mut self, cause: ErrorCode) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    pub fn is(&self, code: Code) -> bool {
        self.code == code.code
    }

    pub fn details(&self) -> &str {
        self.details.as_deref().unwrap_or("")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.details())
    }
}

impl std::error::Error for ErrorCode {}
