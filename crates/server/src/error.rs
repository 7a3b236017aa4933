//! The one error type of the management node. Inside, errors are typed; at the REST edge
//! they become the upstream `error` object (see [`Error::to_error_code`]).

use rzstack_api::codes::{self, Code};
use rzstack_api::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error with an upstream code, already in wire form.
    #[error("{0}")]
    Api(ErrorCode),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(code: Code, details: impl Into<String>) -> Self {
        Error::Api(ErrorCode::new(code, details))
    }

    /// SYS.1007, invalid argument.
    pub fn argerr(details: impl Into<String>) -> Self {
        Self::code(codes::SYS_1007, details)
    }

    /// SYS.1006, operation error.
    pub fn operr(details: impl Into<String>) -> Self {
        Self::code(codes::SYS_1006, details)
    }

    /// SYS.1003, resource not found.
    pub fn not_found(details: impl Into<String>) -> Self {
        Self::code(codes::SYS_1003, details)
    }

    /// The wire form. Internal causes are logged, not shown beyond a short summary.
    pub fn to_error_code(&self) -> ErrorCode {
        match self {
            Error::Api(e) => e.clone(),
            Error::Db(e) => {
                tracing::error!(error = %e, "database error");
                ErrorCode::new(codes::SYS_1000, format!("database error: {e}"))
            }
            Error::Migrate(e) => ErrorCode::new(codes::SYS_1000, e.clone()),
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ErrorCode::new(codes::SYS_1000, e.clone())
            }
        }
    }

    /// True when this is an upstream error with the given code.
    pub fn is(&self, code: Code) -> bool {
        matches!(self, Error::Api(e) if e.is(code))
    }
}

impl From<ErrorCode> for Error {
    fn from(e: ErrorCode) -> Self {
        Error::Api(e)
    }
}

/// A REST-level refusal: plain text with a status, before any job exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: u16,
    pub text: String,
}

impl RestError {
    pub fn bad_request(text: impl Into<String>) -> Self {
        RestError { status: 400, text: text.into() }
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        RestError { status: 404, text: text.into() }
    }
    pub fn method_not_allowed(text: impl Into<String>) -> Self {
        RestError { status: 405, text: text.into() }
    }
    pub fn internal(text: impl Into<String>) -> Self {
        RestError { status: 500, text: text.into() }
    }
}
