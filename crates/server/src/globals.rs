//! Global configurations (upstream `GlobalConfigVO`): every knob the project uses, with its
//! upstream category, name and default. Values live in the database; reads come from an
//! in-memory copy refreshed on update.

use crate::db::{Db, Val};
use crate::error::Result;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    pub category: &'static str,
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

pub const SESSION_TIMEOUT: ConfigDef = ConfigDef {
    category: "identity",
    name: "session.timeout",
    default: "7200",
    description: "The session timeout in seconds",
};
pub const SESSION_MAX_CONCURRENT: ConfigDef = ConfigDef {
    category: "identity",
    name: "session.maxConcurrent",
    default: "500",
    description: "The max concurrent sessions of an account or user",
};
pub const SESSION_CLEANUP_INTERVAL: ConfigDef = ConfigDef {
    category: "identity",
    name: "session.cleanup.interval",
    default: "3600",
    description: "Interval in seconds to clean up expired sessions",
};
pub const API_TIMEOUT: ConfigDef = ConfigDef {
    category: "apiTimeout",
    name: "apiTimeout",
    default: "1800000",
    description: "Default API timeout in milliseconds",
};
pub const COMPLETED_API_EXPIRED_PERIOD: ConfigDef = ConfigDef {
    category: "rest",
    name: "completedApi.expiredPeriod",
    default: "10800",
    description: "Seconds a finished API job result is kept",
};
pub const EXPIRED_API_SCAN_INTERVAL: ConfigDef = ConfigDef {
    category: "rest",
    name: "expiredApi.scanInterval",
    default: "3600",
    description: "Interval in seconds to purge expired API job results",
};

pub const HOST_CPU_OVER_PROVISIONING_RATIO: ConfigDef = ConfigDef {
    category: "host",
    name: "cpu.overProvisioning.ratio",
    default: "10",
    description: "The over provisioning ratio for CPU number",
};
pub const KVM_RESERVED_MEMORY: ConfigDef = ConfigDef {
    category: "kvm",
    name: "reservedMemory",
    default: "1G",
    description: "The memory capacity reserved on all KVM hosts for the agent and other host applications",
};
pub const KVM_RESERVED_CPU: ConfigDef = ConfigDef {
    category: "kvm",
    name: "reservedCpu",
    default: "512",
    description: "The CPU capacity reserved on all KVM hosts for the agent and other host applications",
};

pub const HOST_PING_INTERVAL: ConfigDef = ConfigDef {
    category: "host",
    name: "ping.interval",
    default: "60",
    description: "The interval management server sends ping command to host, in seconds",
};
pub const HOST_PING_TIMEOUT: ConfigDef = ConfigDef {
    category: "host",
    name: "ping.timeout",
    default: "10",
    description: "The timeout value of agent ping, in seconds",
};
pub const HOST_PING_MAX_FAILURE: ConfigDef = ConfigDef {
    category: "host",
    name: "ping.maxFailure",
    default: "3",
    description: "The maximum count of ping failure before reconnecting host",
};
pub const HOST_PING_PARALLELISM_DEGREE: ConfigDef = ConfigDef {
    category: "host",
    name: "ping.parallelismDegree",
    default: "100",
    description: "The max hosts management server sends ping command to host in parallel",
};

/// Upstream's description, word for word (its Never text does not match what upstream does:
/// the VM stays Destroyed and the expunge task skips it; rzstack does the same).
pub const VM_DELETION_POLICY: ConfigDef = ConfigDef {
    category: "vm",
    name: "deletionPolicy",
    default: "Delay",
    description: "the behavior of deleting a vm, options are [Direct, Delay, Never]. Direct: delete the vm from database and \
                  directly delete its root volume; Delay: change the vm's state to Destroyed in database; after the period \
                  controlled by 'expungePeriod' passes, delete the vm from database and delete it's root volume; Never: delete \
                  the vm from database but never delete its root volume",
};
pub const VM_EXPUNGE_PERIOD: ConfigDef = ConfigDef {
    category: "vm",
    name: "expungePeriod",
    default: "604800",
    description:
        "the period before a destroyed vm being deleted from database and before its root volume being deleted \
                  from primary storage, in seconds",
};
pub const VM_EXPUNGE_INTERVAL: ConfigDef = ConfigDef {
    category: "vm",
    name: "expungeInterval",
    default: "3600",
    description: "the interval the expunging vm task runs, in seconds",
};
pub const L3_IP_ALLOCATE_STRATEGY: ConfigDef = ConfigDef {
    category: "l3Network",
    name: "ipAllocateStrategy",
    default: "RandomIpAllocatorStrategy",
    description: "ip allocate strategy",
};

/// Every global config rzstack knows.
pub const ALL: &[ConfigDef] = &[
    SESSION_TIMEOUT,
    SESSION_MAX_CONCURRENT,
    SESSION_CLEANUP_INTERVAL,
    API_TIMEOUT,
    COMPLETED_API_EXPIRED_PERIOD,
    EXPIRED_API_SCAN_INTERVAL,
    HOST_CPU_OVER_PROVISIONING_RATIO,
    KVM_RESERVED_MEMORY,
    KVM_RESERVED_CPU,
    HOST_PING_INTERVAL,
    HOST_PING_TIMEOUT,
    HOST_PING_MAX_FAILURE,
    HOST_PING_PARALLELISM_DEGREE,
    VM_DELETION_POLICY,
    VM_EXPUNGE_PERIOD,
    VM_EXPUNGE_INTERVAL,
    L3_IP_ALLOCATE_STRATEGY,
];

#[derive(Default)]
pub struct Globals {
    values: RwLock<HashMap<(String, String), String>>,
}

impl Globals {
    pub async fn load(db: &Db) -> Result<Globals> {
        let g = Globals::default();
        g.reload(db).await?;
        Ok(g)
    }

    pub async fn reload(&self, db: &Db) -> Result<()> {
        let rows = db.fetch_all("SELECT category, name, value FROM global_config", &[]).await?;
        let mut map = HashMap::new();
        for r in rows {
            map.insert((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?), r.try_get::<String, _>(2)?);
        }
        match self.values.write() {
            Ok(mut v) => *v = map,
            Err(p) => *p.into_inner() = map,
        }
        Ok(())
    }

    pub fn get(&self, def: &ConfigDef) -> String {
        let v = match self.values.read() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        v.get(&(def.category.to_string(), def.name.to_string())).cloned().unwrap_or_else(|| def.default.to_string())
    }

    pub fn get_i64(&self, def: &ConfigDef) -> i64 {
        self.get(def).parse().unwrap_or_else(|_| def.default.parse().unwrap_or(0))
    }

    /// Persist a new value and refresh the in-memory copy.
    pub async fn set(&self, db: &Db, def: &ConfigDef, value: &str) -> Result<()> {
        db.execute(
            "INSERT INTO global_config (category, name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (category, name) DO UPDATE SET value = excluded.value",
            &[Val::from(def.category), Val::from(def.name), Val::from(value)],
        )
        .await?;
        self.reload(db).await
    }
}
