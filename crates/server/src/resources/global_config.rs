//! Global configurations (upstream `GlobalConfigVO`): query (by SQL over the `global_config`
//! rows, which [`ensure`] seeds for every entry of [`crate::globals::ALL`]) and update, with
//! upstream's value validation. Updates that change derived numbers (the CPU
//! over-provisioning ratio → every host's total CPU) are applied in the same transaction.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::{Db, Val};
use crate::error::{Error, Result};
use crate::globals::{self, ConfigDef};
use crate::params::Param;
use crate::query::{self, field, Cond, FType, Op, QueryParams, ResourceDef};
use crate::App;
use serde::Deserialize;

pub static GLOBAL_CONFIG: ResourceDef = ResourceDef {
    inventory: "GlobalConfigInventory",
    vo: "GlobalConfigVO",
    class: "org.zstack.core.config.GlobalConfigInventory",
    table: "global_config",
    fields: &[
        field("name", "name", FType::Str),
        field("category", "category", FType::Str),
        field("description", "description", FType::Str),
        field("defaultValue", "default_value", FType::Str),
        field("value", "value", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.category, t.name",
    tag_type: None,
};

/// Give every known config its row (value = default when missing) and refresh the
/// description and default of existing rows. Called once at start.
pub async fn ensure(db: &Db) -> Result<()> {
    let mut tx = db.begin_write().await?;
    for d in globals::ALL {
        tx.execute(
            "INSERT INTO global_config (category, name, value, description, default_value) VALUES ($1, $2, $3, $4, $3) \
             ON CONFLICT (category, name) DO UPDATE SET description = excluded.description, \
             default_value = excluded.default_value",
            &[Val::from(d.category), Val::from(d.name), Val::from(d.default), Val::from(d.description)],
        )
        .await?;
    }
    tx.commit().await
}

/// How a config's value is checked (upstream: the XML `type` plus `@GlobalConfigValidation`
/// and validator extensions).
enum Rule {
    /// A `java.lang.Integer`/`java.lang.Long`, optionally bounded (`numberGreaterThan`,
    /// `numberLessThan`, which upstream treats as inclusive bounds).
    Number {
        class: &'static str,
        min: Option<i64>,
        max: Option<i64>,
    },
    Boolean,
    /// One of a fixed list (`@GlobalConfigValidation(validValues)`); `unsupported`: upstream
    /// values this node refuses with a clear error instead of ignoring them.
    Values {
        valid: &'static [&'static str],
        unsupported: &'static [&'static str],
    },
    /// A size string such as `1G` (kvm.reservedMemory), at most `max` bytes.
    Size {
        max: i64,
    },
    Any,
}

fn rule_of(d: &ConfigDef) -> Rule {
    match (d.category, d.name) {
        ("host", "cpu.overProvisioning.ratio") => {
            Rule::Number { class: "java.lang.Integer", min: Some(1), max: Some(1000) }
        }
        ("host", "ping.interval" | "ping.timeout") => {
            Rule::Number { class: "java.lang.Integer", min: Some(1), max: None }
        }
        ("host", "ping.maxFailure" | "ping.parallelismDegree") => {
            Rule::Number { class: "java.lang.Integer", min: Some(0), max: None }
        }
        ("kvm", "reservedMemory") => Rule::Size { max: 1 << 40 },
        ("vm", "deletionPolicy") => Rule::Values { valid: &["Direct", "Delay", "Never"], unsupported: &[] },
        ("vm", "expungePeriod") => Rule::Number { class: "java.lang.Long", min: Some(0), max: None },
        ("vm", "expungeInterval") => Rule::Number { class: "java.lang.Long", min: Some(1), max: None },
        ("l3Network", "ipAllocateStrategy") => Rule::Values {
            valid: &[
                "FirstAvailableIpAllocatorStrategy",
                "RandomIpAllocatorStrategy",
                "AscDelayRecycleIpAllocatorStrategy",
            ],
            unsupported: &["AscDelayRecycleIpAllocatorStrategy"],
        },
        ("kvm", "reservedCpu") => Rule::Number { class: "java.lang.Long", min: Some(-1), max: None },
        _ if d.default.parse::<i64>().is_ok() => Rule::Number { class: "java.lang.Long", min: None, max: None },
        _ if d.default == "true" || d.default == "false" => Rule::Boolean,
        _ => Rule::Any,
    }
}

fn canonical_name(d: &ConfigDef) -> String {
    format!("Global config[category: {}, name: {}]", d.category, d.name)
}

/// Parse an upstream size string (`SizeUtils.isSizeString`): a non-negative integer with an
/// optional one-letter unit T/t/G/g/M/m/K/k/B/b. Returns bytes.
pub fn parse_size(s: &str) -> Option<i64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: i64 = s[..digits].parse().ok()?;
    let shift = match &s[digits..] {
        "" | "B" | "b" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    n.checked_mul(1i64 << shift)
}

fn validate(d: &ConfigDef, value: Option<&str>) -> Result<String> {
    let shown = value.unwrap_or("null");
    let Some(v) = value else {
        return match rule_of(d) {
            Rule::Number { class, .. } => Err(Error::argerr(format!(
                "GlobalConfig[category:{}, name:{}] is of type {class}, the value[null] cannot be converted to that type, null",
                d.category, d.name
            ))),
            _ => Err(Error::argerr(format!("{} cannot be null", canonical_name(d)))),
        };
    };
    match rule_of(d) {
        Rule::Number { class, min, max } => {
            let ok = if class == "java.lang.Integer" { v.parse::<i32>().is_ok() } else { v.parse::<i64>().is_ok() };
            if !ok {
                // Upstream prints the message of the reflection wrapper exception, which is null.
                return Err(Error::argerr(format!(
                    "GlobalConfig[category:{}, name:{}] is of type {class}, the value[{shown}] cannot be converted to that type, null",
                    d.category, d.name
                )));
            }
            let n: i64 = v.parse().unwrap_or_default();
            if let Some(max) = max {
                if n > max {
                    return Err(Error::argerr(format!(
                        "{} should not greater than {max}, but got {n}",
                        canonical_name(d)
                    )));
                }
            }
            if let Some(min) = min {
                if n < min {
                    return Err(Error::argerr(format!("{} should not less than {min}, but got {n}", canonical_name(d))));
                }
            }
        }
        Rule::Boolean => {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                return Err(Error::argerr(format!(
                    "GlobalConfig[category:{}, name:{}]'s value[{v}] is not a valid boolean string[true, false].",
                    d.category, d.name
                )));
            }
        }
        Rule::Size { max } => match parse_size(v) {
            None => {
                return Err(Error::argerr(format!(
                    "{} only allows a size string. A size string is a number with suffix 'T/t/G/g/M/m/K/k/B/b' or without suffix, but got {v}",
                    canonical_name(d)
                )))
            }
            Some(b) if b > max => {
                return Err(Error::argerr(format!(
                    "Value {}  cannot be greater than the 1TB but got {v}",
                    canonical_name(d)
                )))
            }
            Some(_) => {}
        },
        Rule::Values { valid, unsupported } => {
            if !valid.contains(&v) {
                return Err(Error::argerr(format!("{v} is not a valid value. Valid values are [{}]", valid.join(", "))));
            }
            if unsupported.contains(&v) {
                return Err(Error::argerr(format!(
                    "{v} is not supported by this management node for {}",
                    canonical_name(d)
                )));
            }
        }
        Rule::Any => {}
    }
    Ok(v.to_string())
}

async fn inventory(db: &Db, category: &str, name: &str) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let qp = QueryParams {
        conds: vec![
            Cond { name: "category".into(), op: Op::Eq, value: category.to_string() },
            Cond { name: "name".into(), op: Op::Eq, value: name.to_string() },
        ],
        limit: Some(1),
        ..Default::default()
    };
    Ok(query::run(db, &GLOBAL_CONFIG, &qp).await?.inventories.and_then(|mut v| v.pop()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateGlobalConfig {
    category: String,
    name: String,
    value: Option<serde_json::Value>,
}

async fn update_global_config(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateGlobalConfig = msg.parse()?;
    let Some(def) = globals::ALL.iter().find(|d| d.category == req.category && d.name == req.name) else {
        return Err(Error::argerr(format!(
            "Unable to find GlobalConfig[category: {}, name: {}]",
            req.category, req.name
        )));
    };
    let raw = match &req.value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let value = validate(def, raw.as_deref())?;
    let mut tx = app.db.begin_write().await?;
    tx.execute(
        "UPDATE global_config SET value = $1 WHERE category = $2 AND name = $3",
        &[Val::from(value.as_str()), Val::from(def.category), Val::from(def.name)],
    )
    .await?;
    if (def.category, def.name)
        == (globals::HOST_CPU_OVER_PROVISIONING_RATIO.category, globals::HOST_CPU_OVER_PROVISIONING_RATIO.name)
    {
        let ratio: i64 = value.parse().unwrap_or(1);
        super::host::apply_cpu_ratio(&mut tx, ratio).await?;
    }
    tx.commit().await?;
    app.globals.reload(&app.db).await?;
    match inventory(&app.db, def.category, def.name).await? {
        Some(inv) => Ok(Reply::inventory(&GLOBAL_CONFIG, inv)),
        None => Err(Error::Internal(format!("global config {}.{} vanished", def.category, def.name))),
    }
}

pub static APIS: &[ApiDef] = &[
    ApiDef::query("QueryGlobalConfig", "/global-configurations", &GLOBAL_CONFIG),
    ApiDef::action("UpdateGlobalConfig", "/global-configurations/{category}/{name}/actions")
        .params(&[Param::str("category").required(), Param::str("name").required(), Param::str("value")])
        .handler(|a, m| boxed(update_global_config(a, m))),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("3k"), Some(3072));
        assert_eq!(parse_size("1GB"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size("G"), None);
    }

    #[test]
    fn rules() {
        let ratio = globals::HOST_CPU_OVER_PROVISIONING_RATIO;
        assert!(validate(&ratio, Some("5")).is_ok());
        assert!(validate(&ratio, Some("0")).unwrap_err().to_string().contains("should not less than 1, but got 0"));
        assert!(validate(&ratio, Some("1001")).unwrap_err().to_string().contains("should not greater than 1000"));
        assert!(validate(&ratio, Some("x")).unwrap_err().to_string().contains("is of type java.lang.Integer"));
        let mem = globals::KVM_RESERVED_MEMORY;
        assert!(validate(&mem, Some("2G")).is_ok());
        assert!(validate(&mem, Some("2GB")).unwrap_err().to_string().contains("only allows a size string"));
        assert!(validate(&mem, Some("2T")).unwrap_err().to_string().contains("cannot be greater than the 1TB"));
    }
}
