//! System-tag pattern checks (upstream `TagManagerImpl`): every system tag of a message must
//! match a pattern the API accepts, e.g. `volumeProvisioningStrategy::{strategy}`.

use crate::error::{Error, Result};

/// Tags every API accepts.
pub const GLOBAL: &[&str] = &["validationOnly"];

/// True when `tag` matches `pattern`; `{name}` in a pattern matches one or more characters
/// up to the next literal part.
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    fn go(p: &str, t: &str) -> bool {
        match p.find('{') {
            None => p == t,
            Some(i) => {
                let (lit, rest) = p.split_at(i);
                let Some(t) = t.strip_prefix(lit) else { return false };
                let Some(close) = rest.find('}') else { return false };
                let after = &rest[close + 1..];
                if after.is_empty() {
                    return !t.is_empty();
                }
                let next_lit_end = after.find('{').unwrap_or(after.len());
                let next_lit = &after[..next_lit_end];
                // try every split point where the next literal starts
                let mut start = 1;
                while start <= t.len() {
                    match t[start..].find(next_lit) {
                        Some(j) => {
                            let k = start + j;
                            if go(after, &t[k..]) {
                                return true;
                            }
                            start = k + 1;
                        }
                        None => return false,
                    }
                }
                false
            }
        }
    }
    go(pattern, tag)
}

/// Refuse any system tag that matches neither the API's patterns nor the global ones.
pub fn validate(patterns: &[&str], tags: &[String]) -> Result<()> {
    for t in tags {
        if !patterns.iter().chain(GLOBAL).any(|p| tag_matches(p, t)) {
            return Err(Error::argerr(format!("no system tag matches {t}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(tag_matches("validationOnly", "validationOnly"));
        assert!(tag_matches("staticIp::{l3NetworkUuid}::{ip}", "staticIp::abc::10.0.0.1"));
        assert!(!tag_matches("staticIp::{l3NetworkUuid}::{ip}", "staticIp::abc"));
        assert!(tag_matches("volumeProvisioningStrategy::{s}", "volumeProvisioningStrategy::ThickProvisioning"));
        assert!(!tag_matches("volumeProvisioningStrategy::{s}", "volumeProvisioningStrategy::"));
        assert!(validate(&[], &["bogus".into()]).is_err());
    }
}
