//! Small helpers used across the server.

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new upstream-style uuid: UUID4, 32 lower-case hex digits without dashes.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Upstream's uuid pattern for `resourceUuid`:
/// `[0-9a-f]{8}[0-9a-f]{4}[1-5][0-9a-f]{3}[89ab][0-9a-f]{3}[0-9a-f]{12}`.
pub fn is_upstream_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 32
        && b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        && (b'1'..=b'5').contains(&b[12])
        && matches!(b[16], b'8' | b'9' | b'a' | b'b')
}

/// A uuid that is 32 hex digits, any version (what references to resources look like).
pub fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = new_uuid();
        assert!(is_upstream_uuid(&u), "{u}");
        assert!(!is_upstream_uuid("36c27e8ff05c4780bf6d2fa65700f22"));
        assert!(!is_upstream_uuid("36c27e8ff05c0780bf6d2fa65700f22e"));
        assert!(is_upstream_uuid("36c27e8ff05c4780bf6d2fa65700f22e"));
        assert!(is_hex32("36C27E8FF05C4780BF6D2FA65700F22E"));
    }
}
