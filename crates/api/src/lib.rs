//! Wire types of the ZStack v1 REST API as rzstack speaks it: error codes and the `error`
//! object, dates in upstream format, and small shared reply shapes. No I/O lives here.

pub mod agent;
pub mod codes;
pub mod date;
pub mod error;

pub use codes::Code;
pub use error::ErrorCode;
