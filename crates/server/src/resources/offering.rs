//! Instance offerings (upstream `InstanceOfferingVO`) and disk offerings (`DiskOfferingVO`):
//! create, update, change state, delete, query.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;

pub static INSTANCE_OFFERING: ResourceDef = ResourceDef {
    inventory: "InstanceOfferingInventory",
    vo: "InstanceOfferingVO",
    class: "org.zstack.header.configuration.InstanceOfferingInventory",
    table: "instance_offering",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("cpuNum", "cpu_num", FType::Int),
        field("cpuSpeed", "cpu_speed", FType::Int),
        field("memorySize", "memory_size", FType::Int),
        field("reservedMemorySize", "reserved_memory_size", FType::Int),
        field("type", "type", FType::Str),
        field("allocatorStrategy", "allocator_strategy", FType::Str),
        field("sortKey", "sort_key", FType::Int),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("state", "state", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("InstanceOfferingVO"),
};

pub static DISK_OFFERING: ResourceDef = ResourceDef {
    inventory: "DiskOfferingInventory",
    vo: "DiskOfferingVO",
    class: "org.zstack.header.configuration.DiskOfferingInventory",
    table: "disk_offering",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("diskSize", "disk_size", FType::Int),
        field("sortKey", "sort_key", FType::Int),
        field("state", "state", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("allocatorStrategy", "allocator_strategy", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("DiskOfferingVO"),
};

/// Host allocator strategies upstream registers (exposed or not: `hasType` knows them all).
pub const HOST_ALLOCATOR_STRATEGIES: &[&str] = &[
    "DefaultHostAllocatorStrategy",
    "DesignatedHostAllocatorStrategy",
    "LastHostPreferredAllocatorStrategy",
    "LeastVmPreferredHostAllocatorStrategy",
    "StoppedVmAwareLeastVmPreferredHostAllocatorStrategy",
    "MigrateVmAllocatorStrategy",
    "LocalStorageMigrateVmAllocatorStrategy",
];

/// Primary-storage allocation strategies upstream registers.
pub const PS_ALLOCATION_STRATEGIES: &[&str] = &[
    "DefaultPrimaryStorageAllocationStrategy",
    "LeastVolumePrimaryStorageAllocationStrategy",
    "MaximumAvailableCapacityAllocationStrategy",
    "CustomOrderPrimaryStorageAllocationStrategy",
    "LocalPrimaryStorageStrategy",
];

/// Instance offering types (`UserVm`; the virtual-router plugin adds `VirtualRouter`).
pub const INSTANCE_OFFERING_TYPES: &[&str] = &["UserVm", "VirtualRouter"];

const MIB: i64 = 1024 * 1024;

async fn reply(app: &App, def: &'static ResourceDef, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, def, uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInstanceOffering {
    name: String,
    description: Option<String>,
    cpu_num: Option<i64>,
    memory_size: Option<i64>,
    reserved_memory_size: Option<i64>,
    allocator_strategy: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn create_instance_offering(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateInstanceOffering = msg.parse()?;
    // Upstream's fields are primitives: an absent number is 0, which the range rules refuse.
    let cpu_num = req.cpu_num.unwrap_or(0);
    if !(1..=1024).contains(&cpu_num) {
        return Err(Error::argerr("field[cpuNum] must be in range of [1, 1024]"));
    }
    let memory = req.memory_size.unwrap_or(0);
    if memory < 1 {
        return Err(Error::argerr(format!("field[memorySize] must be in range of [1 byte, {} bytes]", i64::MAX)));
    }
    let reserved = req.reserved_memory_size.unwrap_or(0);
    if let Some(s) = &req.allocator_strategy {
        if !HOST_ALLOCATOR_STRATEGIES.contains(&s.as_str()) {
            return Err(Error::argerr(format!("unsupported host allocation strategy[{s}]")));
        }
    }
    if let Some(t) = &req.kind {
        if !INSTANCE_OFFERING_TYPES.contains(&t.as_str()) {
            return Err(Error::argerr(format!("unsupported instance offering type[{t}]")));
        }
    }
    if memory < 16 * MIB {
        return Err(Error::argerr(format!(
            "memory size[{memory} bytes] is less than 16M, no modern operating system is likely able to boot with such small memory size"
        )));
    }
    if reserved > memory {
        return Err(Error::argerr(format!(
            "reserved memory size[{reserved} bytes] is greater than memory size[{memory} bytes]"
        )));
    }
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &INSTANCE_OFFERING, &uuid, &msg).await? {
        // Upstream does not copy sortKey from the message: it stays 0.
        tx.execute(
            "INSERT INTO instance_offering (uuid, name, description, cpu_num, cpu_speed, memory_size, \
             reserved_memory_size, type, allocator_strategy, sort_key, state, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, 0, 'Enabled', $9, $9)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::I(cpu_num),
                Val::I(memory),
                Val::I(reserved),
                Val::from(req.kind.unwrap_or_else(|| "UserVm".into())),
                Val::from(req.allocator_strategy.unwrap_or_else(|| "LeastVmPreferredHostAllocatorStrategy".into())),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, INSTANCE_OFFERING.vo, msg.account_uuid()).await?;
        super::tag::attach_create_tags(&mut tx, &uuid, INSTANCE_OFFERING.vo, &msg.system_tags(), &msg.user_tags())
            .await?;
    }
    tx.commit().await?;
    reply(&app, &INSTANCE_OFFERING, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInstanceOffering {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    allocator_strategy: Option<String>,
}

async fn update_instance_offering(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateInstanceOffering = msg.parse()?;
    if let Some(s) = &req.allocator_strategy {
        if !HOST_ALLOCATOR_STRATEGIES.contains(&s.as_str()) {
            return Err(Error::argerr(format!("unsupported host allocation strategy[{s}]")));
        }
    }
    if req.name.is_some() || req.description.is_some() || req.allocator_strategy.is_some() {
        app.db
            .execute(
                "UPDATE instance_offering SET name = COALESCE($1, name), description = COALESCE($2, description), \
                 allocator_strategy = COALESCE($3, allocator_strategy), last_op_date = $4 WHERE uuid = $5",
                &[
                    Val::from(req.name),
                    Val::from(req.description),
                    Val::from(req.allocator_strategy),
                    Val::I(now_ms()),
                    Val::from(req.uuid.as_str()),
                ],
            )
            .await?;
    }
    reply(&app, &INSTANCE_OFFERING, &req.uuid).await
}

async fn delete(app: App, msg: Msg, def: &'static ResourceDef) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    tx.execute(&format!("DELETE FROM {} WHERE uuid = $1", def.table), &[Val::from(uuid.as_str())]).await?;
    super::tag::delete_for_resource(&mut tx, &uuid).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateDiskOffering {
    name: String,
    description: Option<String>,
    disk_size: Option<i64>,
    sort_key: Option<i64>,
    allocation_strategy: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn create_disk_offering(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateDiskOffering = msg.parse()?;
    let size = req.disk_size.unwrap_or(0);
    if size < 1 {
        return Err(Error::argerr(format!("field[diskSize] must be in range of [1 byte, {} bytes]", i64::MAX)));
    }
    if let Some(s) = &req.allocation_strategy {
        if !PS_ALLOCATION_STRATEGIES.contains(&s.as_str()) {
            return Err(Error::argerr(format!("unsupported primary storage allocation strategy[{s}]")));
        }
    }
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &DISK_OFFERING, &uuid, &msg).await? {
        tx.execute(
            "INSERT INTO disk_offering (uuid, name, description, disk_size, sort_key, state, type, \
             allocator_strategy, create_date, last_op_date) VALUES ($1, $2, $3, $4, $5, 'Enabled', $6, $7, $8, $8)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::I(size),
                Val::I(req.sort_key.unwrap_or(0)),
                Val::from(req.kind.unwrap_or_else(|| "DefaultDiskOfferingType".into())),
                Val::from(req.allocation_strategy.unwrap_or_else(|| "DefaultPrimaryStorageAllocationStrategy".into())),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, DISK_OFFERING.vo, msg.account_uuid()).await?;
        super::tag::attach_create_tags(&mut tx, &uuid, DISK_OFFERING.vo, &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    reply(&app, &DISK_OFFERING, &uuid).await
}

async fn update_disk_offering(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &DISK_OFFERING, true).await?;
    reply(&app, &DISK_OFFERING, &uuid).await
}

const STATE_EVENTS: &[&str] = &["enable", "disable"];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateInstanceOffering", "/instance-offerings")
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::int("cpuNum").range(1, 1024),
            Param::int("memorySize").range(1, i64::MAX).unit("byte", "bytes"),
            Param::int("reservedMemorySize").range(0, i64::MAX).unit("byte", "bytes"),
            Param::str("allocatorStrategy"),
            Param::int("sortKey"),
            Param::str("type"),
        ])
        .tags(&["instanceOfferingUserConfig::{config}"])
        .handler(|a, m| boxed(create_instance_offering(a, m))),
    ApiDef::query("QueryInstanceOffering", "/instance-offerings", &INSTANCE_OFFERING)
        .optional_paths(&["/instance-offerings/{uuid}"]),
    ApiDef::action("UpdateInstanceOffering", "/instance-offerings/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&INSTANCE_OFFERING),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("allocatorStrategy"),
        ])
        .handler(|a, m| boxed(update_instance_offering(a, m))),
    ApiDef::action("ChangeInstanceOfferingState", "/instance-offerings/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&INSTANCE_OFFERING),
            Param::str("stateEvent").required().values(STATE_EVENTS),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &INSTANCE_OFFERING, super::enable_disable))),
    ApiDef::delete("DeleteInstanceOffering", "/instance-offerings/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&INSTANCE_OFFERING).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete(a, m, &INSTANCE_OFFERING))),
    ApiDef::create("CreateDiskOffering", "/disk-offerings")
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::int("diskSize").range(1, i64::MAX).unit("byte", "bytes"),
            Param::int("sortKey"),
            Param::str("allocationStrategy"),
            Param::str("type").values(&["zstack"]),
        ])
        .tags(&["diskOfferingUserConfig::{config}"])
        .handler(|a, m| boxed(create_disk_offering(a, m))),
    ApiDef::query("QueryDiskOffering", "/disk-offerings", &DISK_OFFERING).optional_paths(&["/disk-offerings/{uuid}"]),
    ApiDef::action("UpdateDiskOffering", "/disk-offerings/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&DISK_OFFERING),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update_disk_offering(a, m))),
    ApiDef::action("ChangeDiskOfferingState", "/disk-offerings/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&DISK_OFFERING),
            Param::str("stateEvent").required().values(STATE_EVENTS),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &DISK_OFFERING, super::enable_disable))),
    ApiDef::delete("DeleteDiskOffering", "/disk-offerings/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&DISK_OFFERING).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete(a, m, &DISK_OFFERING))),
];
