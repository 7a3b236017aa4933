//! The upstream error-code catalogue: each code with its fixed description text
//! (upstream `conf/errorCodes/*.xml`). Descriptions never change per occurrence; the
//! per-occurrence text goes into `details`.

/// One upstream error code and its fixed description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub description: &'static str,
}

macro_rules! codes {
    ($($name:ident = $code:literal, $desc:literal;)*) => {
        $(pub const $name: Code = Code { code: $code, description: $desc };)*
        /// Every code this catalogue knows, for lookups by string.
        pub const ALL: &[Code] = &[$($name),*];
    };
}

codes! {
    SYS_1000 = "SYS.1000", "An internal error happened in system";
    SYS_1001 = "SYS.1001", "A message or a operation timeout";
    SYS_1002 = "SYS.1002", "Unable to create a resource";
    SYS_1003 = "SYS.1003", "A resource can not be found";
    SYS_1004 = "SYS.1004", "Unable to delete a resource";
    SYS_1005 = "SYS.1005", "Unable to change resource state";
    SYS_1006 = "SYS.1006", "An operation failed";
    SYS_1007 = "SYS.1007", "One or more API argument is invalid";
    SYS_1008 = "SYS.1008", "Unknown message, no service can deal with the message";
    SYS_1009 = "SYS.1009", "No route for message";
    SYS_1010 = "SYS.1010", "Management server is not ready to serve";
    SYS_1011 = "SYS.1011", "The message can not be delivered by Rabbitmq";
    SYS_1012 = "SYS.1012", "The management node is unavailable";
    SYS_1013 = "SYS.1013", "The resource doesn't have capability to proceed an operation";
    SYS_1014 = "SYS.1014", "The operation is not implemented or not supported yet";
    SYS_1015 = "SYS.1015", "Cannot make a HTTP request";
    SYS_1016 = "SYS.1016", "Cannot do an IO operation(e.g. network IO error, file IO error)";
    SYS_1017 = "SYS.1017", "A message or a operation cancelled";

    ID_1000 = "ID.1000", "Unable to authenticate a user";
    ID_1001 = "ID.1001", "The session is invalid, either wrong session id or the session has been expired";
    ID_1002 = "ID.1002", "Permission denied";
    ID_1003 = "ID.1003", "Quota exceeded";
    ID_1004 = "ID.1004", "Invalid quota operation";
    ID_1005 = "ID.1005", "Need to change initial password";
    ID_1006 = "ID.1006", "Login sessions hit limit of max allowed concurrent login sessions";
}

/// The catalogue entry of a code string such as `"SYS.1007"`.
pub fn lookup(code: &str) -> Option<Code> {
    ALL.iter().copied().find(|c| c.code == code)
}
