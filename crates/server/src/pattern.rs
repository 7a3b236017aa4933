//! Java-style full-match regular expressions (upstream `validRegexValues`), compiled once.

use regex::Regex;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

static CACHE: LazyLock<Mutex<HashMap<&'static str, Regex>>> = LazyLock::new(Default::default);

/// True when `s` matches `re` as a whole (Java `String.matches`).
pub fn matches(re: &'static str, s: &str) -> bool {
    let mut cache = match CACHE.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    if !cache.contains_key(re) {
        match Regex::new(&format!("^(?:{re})$")) {
            Ok(r) => {
                cache.insert(re, r);
            }
            Err(e) => {
                tracing::error!(%re, error = %e, "bad validation regex");
                return true;
            }
        }
    }
    cache.get(re).is_some_and(|r| r.is_match(s))
}
