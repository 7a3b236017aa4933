//! VM instances (upstream `VmInstanceVO`, `VmNicVO`, `VmCdRomVO`): CreateVmInstance as a saga,
//! QueryVmInstance, QueryVmNic.
//!
//! Creation (facts 4.3): the upstream interceptor checks run first, in upstream order; then
//! the saga [`CREATE_VM`]: VM record → host (atomic CPU/memory reservation) → primary storage
//! (atomic capacity reservation, held on the VM row until the volumes take it) → root and
//! data volume rows → CD-ROM → instantiate on the host → final state. `JustCreate` runs only
//! the first step ([`JUST_CREATE`]). Every step's undo gives back exactly what the step took,
//! guarded by a compare-and-set on the row that records it, so running it twice is harmless.

use crate::api::{boxed, ApiDef, Body, Kind, Method, Msg, Reply, HOURS};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, Child, FType, ResourceDef};
use crate::saga::{self, SagaDef, Step};
use crate::util::{new_uuid, now_ms};
use crate::App;
use futures::future::BoxFuture;
use rzstack_api::{Code, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::cluster::CLUSTER;
use super::host::HOST;
use super::image::IMAGE;
use super::offering::{DISK_OFFERING, INSTANCE_OFFERING};
use super::primary_storage::PRIMARY_STORAGE;
use super::volume::VOLUME;
use super::zone::ZONE;

pub const HOST_ALLOCATION_1000: Code = Code { code: "HOST_ALLOCATION.1000", description: "No available host found" };
pub const PS_1000: Code = Code {
    code: "PS.1000",
    description: "Unable to allocate a primary storage that has available space for required volume",
};
pub const HOST_1005: Code = Code { code: "HOST.1005", description: "Failed to start vm on hypervisor" };

pub static USED_IP: ResourceDef = ResourceDef {
    inventory: "UsedIpInventory",
    vo: "UsedIpVO",
    class: "org.zstack.header.network.l3.UsedIpInventory",
    table: "used_ip",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("ipRangeUuid", "ip_range_uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("ip", "ip", FType::Str),
        field("netmask", "netmask", FType::Str),
        field("gateway", "gateway", FType::Str),
        field("usedFor", "used_for", FType::Str),
        field("metaData", "meta_data", FType::Str),
        field("ipInLong", "ip_in_long", FType::Int),
        field("vmNicUuid", "vm_nic_uuid", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.ip_in_long, t.uuid",
    tag_type: None,
};

pub static VM_NIC: ResourceDef = ResourceDef {
    inventory: "VmNicInventory",
    vo: "VmNicVO",
    class: "org.zstack.header.vm.VmNicInventory",
    table: "vm_nic",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("usedIpUuid", "used_ip_uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("ip", "ip", FType::Str),
        field("mac", "mac", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("netmask", "netmask", FType::Str),
        field("gateway", "gateway", FType::Str),
        field("metaData", "meta_data", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("driverType", "driver_type", FType::Str),
        field("internalName", "internal_name", FType::Str),
        field("deviceId", "device_id", FType::Int),
        field("type", "type", FType::Str),
        field("state", "state", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[Child { name: "usedIps", def: &USED_IP, fk: "vm_nic_uuid", pk: "uuid", many: true }],
    class_of: None,
    order: "t.device_id, t.uuid",
    tag_type: Some("VmNicVO"),
};

pub static VM_CDROM: ResourceDef = ResourceDef {
    inventory: "VmCdRomInventory",
    vo: "VmCdRomVO",
    class: "org.zstack.header.vm.cdrom.VmCdRomInventory",
    table: "vm_cdrom",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("deviceId", "device_id", FType::Int),
        field("isoUuid", "iso_uuid", FType::Str),
        field("isoInstallPath", "iso_install_path", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.device_id, t.uuid",
    tag_type: Some("VmCdRomVO"),
};

pub static VM: ResourceDef = ResourceDef {
    inventory: "VmInstanceInventory",
    vo: "VmInstanceVO",
    class: "org.zstack.header.vm.VmInstanceInventory",
    table: "vm_instance",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("clusterUuid", "cluster_uuid", FType::Str),
        field("imageUuid", "image_uuid", FType::Str),
        field("hostUuid", "host_uuid", FType::Str),
        field("lastHostUuid", "last_host_uuid", FType::Str),
        field("instanceOfferingUuid", "instance_offering_uuid", FType::Str),
        field("rootVolumeUuid", "root_volume_uuid", FType::Str),
        field("platform", "platform", FType::Str),
        field("architecture", "architecture", FType::Str),
        field("defaultL3NetworkUuid", "default_l3_network_uuid", FType::Str),
        field("type", "type", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("memorySize", "memory_size", FType::Int),
        field("reservedMemorySize", "reserved_memory_size", FType::Int),
        field("cpuNum", "cpu_num", FType::Int),
        field("cpuSpeed", "cpu_speed", FType::Int),
        field("allocatorStrategy", "allocator_strategy", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("state", "state", FType::Str),
        field("internalId", "internal_id", FType::Int),
        field("guestOsType", "guest_os_type", FType::Str),
    ],
    children: &[
        Child { name: "vmNics", def: &VM_NIC, fk: "vm_instance_uuid", pk: "uuid", many: true },
        Child { name: "allVolumes", def: &VOLUME, fk: "vm_instance_uuid", pk: "uuid", many: true },
        Child { name: "vmCdRoms", def: &VM_CDROM, fk: "vm_instance_uuid", pk: "uuid", many: true },
    ],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("VmInstanceVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &VM, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&VM, inv)),
        None => Err(Error::not_found(format!("vm instance[uuid:{uuid}] is not found"))),
    }
}

// ---------------------------------------------------------------------------------------
// The request and its checks

#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct CreateVm {
    name: String,
    description: Option<String>,
    instance_offering_uuid: Option<String>,
    cpu_num: Option<i64>,
    memory_size: Option<i64>,
    reserved_memory_size: Option<i64>,
    image_uuid: Option<String>,
    #[serde(default)]
    l3_network_uuids: Vec<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    root_disk_offering_uuid: Option<String>,
    root_disk_size: Option<i64>,
    #[serde(default, deserialize_with = "sizes")]
    data_disk_sizes: Vec<i64>,
    #[serde(default)]
    data_disk_offering_uuids: Vec<String>,
    zone_uuid: Option<String>,
    cluster_uuid: Option<String>,
    host_uuid: Option<String>,
    primary_storage_uuid_for_root_volume: Option<String>,
    default_l3_network_uuid: Option<String>,
    strategy: Option<String>,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
}

/// A list of sizes: numbers, or the strings list validation turns them into.
fn sizes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    let v: Vec<Value> = Deserialize::deserialize(d)?;
    v.iter()
        .map(|x| match x {
            Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom(format!("{n} is not a long"))),
            Value::String(s) => {
                s.trim().parse::<i64>().map_err(|_| serde::de::Error::custom(format!("{s} is not a long")))
            }
            other => Err(serde::de::Error::custom(format!("{other} is not a long"))),
        })
        .collect()
}

/// Parameters of the spec's table this build cannot honour yet: refused, never dropped.
const NOT_YET: &[&str] = &[
    "vmNicParams",
    "dataVolumeTemplateUuids",
    "diskAOs",
    "sshKeyPairUuids",
    "devices",
    "dataVolumeSystemTagsOnIndex",
    "rootVolumeSystemTags",
    "dataVolumeSystemTags",
    "tagUuids",
    "virtio",
];

async fn one_row(app: &App, sql: &str, uuid: &str) -> Result<Option<sqlx::any::AnyRow>> {
    app.db.fetch_optional(sql, &[Val::from(uuid)]).await
}

fn opt_str(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(i)?)
}

/// The upstream interceptor checks (facts 4.2) for the supported parameters, in order;
/// fills the plan's derived fields.
async fn check_and_plan(app: &App, msg: &Msg, req: &mut CreateVm) -> Result<Ctx> {
    for f in NOT_YET {
        if !matches!(msg.fields.get(*f), None | Some(Value::Null)) {
            return Err(Error::argerr(format!(
                "parameter[{f}] of CreateVmInstance is not supported by this management node yet"
            )));
        }
    }
    for t in msg.system_tags() {
        return Err(Error::argerr(format!("system tag[{t}] is not supported by CreateVmInstance yet")));
    }
    // 1. instance settings
    let (cpu_num, memory_size, mut reserved, cpu_speed, allocator) = match &req.instance_offering_uuid {
        Some(o) => {
            let row = one_row(
                app,
                "SELECT state, type, cpu_num, memory_size, reserved_memory_size, cpu_speed, allocator_strategy \
                 FROM instance_offering WHERE uuid = $1",
                o,
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("instance offering[uuid:{o}] is not found")))?;
            let state: String = row.try_get(0)?;
            let ty: String = row.try_get(1)?;
            if state == "Disabled" {
                return Err(Error::operr(format!("instance offering[uuid:{o}] is Disabled, can't create vm from it")));
            }
            if ty != "UserVm" {
                return Err(Error::operr(format!(
                    "instance offering[uuid:{o}, type:{ty}] is not UserVm type, can't create vm from it"
                )));
            }
            let r: i64 = row.try_get(4)?;
            (
                row.try_get::<i64, _>(2)?,
                row.try_get::<i64, _>(3)?,
                req.reserved_memory_size.or(Some(r)),
                row.try_get::<i64, _>(5)?,
                opt_str(&row, 6)?,
            )
        }
        None => {
            let (Some(c), Some(m)) = (req.cpu_num, req.memory_size) else {
                return Err(Error::operr("Missing CPU/memory settings"));
            };
            if c <= 0 || m <= 0 {
                return Err(Error::operr("Unexpected CPU/memory settings"));
            }
            (c, m, req.reserved_memory_size, 0, None)
        }
    };
    if let Some(r) = reserved {
        if r > memory_size {
            return Err(Error::operr(format!("reserved memory[{r}] is greater than memory size[{memory_size}]")));
        }
    }
    if reserved == Some(0) {
        reserved = None;
    }
    // 5. L3 networks
    let mut first_l3_zone = None;
    for (i, l3) in req.l3_network_uuids.iter().enumerate() {
        if req.l3_network_uuids[..i].contains(l3) {
            return Err(Error::operr(format!("Can't add same uuid in the l3Network,uuid: {l3}")));
        }
        let row = one_row(app, "SELECT state, system, zone_uuid FROM l3_network WHERE uuid = $1", l3)
            .await?
            .ok_or_else(|| Error::not_found(format!("l3Network[uuid:{l3}] is not found")))?;
        if row.try_get::<String, _>(0)? == "Disabled" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is Disabled, can not create vm on it")));
        }
        if row.try_get::<i64, _>(1)? != 0 && req.ty.as_deref().unwrap_or("UserVm") == "UserVm" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is system network, can not create user vm on it")));
        }
        if i == 0 {
            first_l3_zone = Some(row.try_get::<String, _>(2)?);
        }
    }
    // 6. location precedence and states
    if req.host_uuid.is_some() {
        req.cluster_uuid = None;
        req.zone_uuid = None;
    } else if req.cluster_uuid.is_some() {
        req.zone_uuid = None;
    }
    let mut zone = req.zone_uuid.clone();
    let mut cluster = req.cluster_uuid.clone();
    let mut hypervisors: Vec<String> = Vec::new();
    if let Some(z) = &req.zone_uuid {
        if let Some(row) = one_row(app, "SELECT state FROM zone WHERE uuid = $1", z).await? {
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "zone[uuid:{z}] is specified but it's Disabled, can not create vm from it"
                )));
            }
        }
    }
    if let Some(c) = &req.cluster_uuid {
        if let Some(row) =
            one_row(app, "SELECT state, zone_uuid, hypervisor_type FROM cluster WHERE uuid = $1", c).await?
        {
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "cluster[uuid:{c}] is specified but it's Disabled, can not create vm from it"
                )));
            }
            zone = Some(row.try_get(1)?);
            hypervisors = vec![row.try_get(2)?];
        }
    }
    if let Some(h) = &req.host_uuid {
        if let Some(row) =
            one_row(app, "SELECT state, status, zone_uuid, cluster_uuid, hypervisor_type FROM host WHERE uuid = $1", h)
                .await?
        {
            let state: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            if state == "Disabled" {
                return Err(Error::operr(format!(
                    "host[uuid:{h}] is specified but it's Disabled, can not create vm from it"
                )));
            }
            if status != "Connected" {
                return Err(Error::operr(format!(
                    "host[uuid:{h}] is specified but it's connection status is {status}, can not create vm from it"
                )));
            }
            zone = Some(row.try_get(2)?);
            cluster = Some(row.try_get(3)?);
            hypervisors = vec![row.try_get(4)?];
        }
    }
    // 7. type
    let ty = req.ty.clone().unwrap_or_else(|| "UserVm".into());
    let mut default_l3 = req.default_l3_network_uuid.clone();
    if ty == "UserVm" {
        if req.l3_network_uuids.len() > 1 && default_l3.is_none() {
            return Err(Error::argerr(
                "there are more than one L3 network specified in l3NetworkUuids, but defaultL3NetworkUuid is null",
            ));
        }
        if req.l3_network_uuids.len() == 1 {
            default_l3 = req.l3_network_uuids.first().cloned();
        }
        if let Some(d) = &default_l3 {
            if !req.l3_network_uuids.contains(d) {
                return Err(Error::argerr(format!(
                    "defaultL3NetworkUuid[uuid:{d}] is not in l3NetworkUuids[{}]",
                    req.l3_network_uuids.join(", ")
                )));
            }
        }
    }
    if zone.is_none() {
        zone = first_l3_zone;
    }
    // 9. somewhere to put it
    if req.l3_network_uuids.is_empty()
        && req.zone_uuid.is_none()
        && req.cluster_uuid.is_none()
        && req.host_uuid.is_none()
    {
        return Err(Error::operr(
            "could not create vm, because at least one of field (l3NetworkUuids,zoneUuid,clusterUuid,hostUuid) should be set",
        ));
    }
    // 11. image
    let mut platform = req.platform.clone();
    let mut guest_os = req.guest_os_type.clone();
    let mut arch = req.architecture.clone();
    let mut image_size = 0i64;
    let mut image_actual = 0i64;
    let mut iso = false;
    let mut format = None;
    match &req.image_uuid {
        None => {
            if platform.is_none()
                || guest_os.is_none()
                || arch.is_none()
                || (req.root_disk_offering_uuid.is_none() && req.root_disk_size.is_none())
            {
                return Err(Error::argerr(
                    "when imageUuid is null, [platform] is required, [guestOsType] is required, [architecture] is required, \
                     rootDiskOfferingUuid or rootDiskSize cannot be all null",
                ));
            }
        }
        Some(i) => {
            let row = one_row(
                app,
                "SELECT state, status, media_type, system, platform, guest_os_type, architecture, size, actual_size, format \
                 FROM image WHERE uuid = $1",
                i,
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("image[uuid:{i}] is not found")))?;
            let state: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            let media: String = row.try_get(2)?;
            let system: i64 = row.try_get(3)?;
            if state == "Disabled" {
                return Err(Error::operr(format!("image[uuid:{i}] is Disabled, can't create vm from it")));
            }
            if status != "Ready" {
                return Err(Error::operr(format!("image[uuid:{i}] is not ready yet, can't create vm from it")));
            }
            if media != "RootVolumeTemplate" && media != "ISO" {
                return Err(Error::argerr(format!(
                    "image[uuid:{i}] is of mediaType: {media}, only RootVolumeTemplate and ISO can be used to create vm"
                )));
            }
            if system != 0 && ty == "UserVm" {
                return Err(Error::argerr(format!("image[uuid:{i}] is system image, can't be used to create user vm")));
            }
            platform = platform.or(opt_str(&row, 4)?);
            guest_os = guest_os.or(opt_str(&row, 5)?);
            arch = arch.or(opt_str(&row, 6)?);
            if platform.is_none() {
                return Err(Error::operr("platform is not set, neither in the message nor on the image"));
            }
            image_size = row.try_get::<Option<i64>, _>(7)?.unwrap_or(0);
            image_actual = row.try_get::<Option<i64>, _>(8)?.unwrap_or(0);
            iso = media == "ISO";
            format = Some(row.try_get::<String, _>(9)?);
            if iso {
                if req.root_disk_offering_uuid.is_none() && req.root_disk_size.is_none() {
                    return Err(Error::argerr("image mediaType is ISO but missing root disk settings"));
                }
                if req.root_disk_size.is_some_and(|s| s <= 0) {
                    return Err(Error::operr("Unexpected root disk settings"));
                }
            }
        }
    }
    // 12. data disk sizes
    if req.data_disk_sizes.iter().any(|s| *s <= 0) {
        return Err(Error::operr("Unexpected data disk settings. dataDiskSizes need to be greater than 0"));
    }
    // 13. disk offerings
    let mut offerings: Vec<String> = req.data_disk_offering_uuids.clone();
    offerings.extend(req.root_disk_offering_uuid.clone());
    let mut disabled = Vec::new();
    let mut offering_size = std::collections::HashMap::new();
    for o in &offerings {
        let row = one_row(app, "SELECT state, disk_size FROM disk_offering WHERE uuid = $1", o)
            .await?
            .ok_or_else(|| Error::not_found(format!("disk offering[uuid:{o}] is not found")))?;
        if row.try_get::<String, _>(0)? == "Disabled" && !disabled.contains(o) {
            disabled.push(o.clone());
        }
        offering_size.insert(o.clone(), row.try_get::<i64, _>(1)?);
    }
    if !disabled.is_empty() {
        return Err(Error::operr(format!(
            "disk offerings[uuids:[{}]] are Disabled, can not create vm from it",
            disabled.join(", ")
        )));
    }

    // The plan: sizes and every id, fixed now.
    let root_size = if req.image_uuid.is_none() || iso {
        match (&req.root_disk_offering_uuid, req.root_disk_size) {
            (Some(o), _) => offering_size.get(o).copied().unwrap_or(0),
            (None, Some(s)) => s,
            _ => 0,
        }
    } else {
        image_size
    };
    if hypervisors.is_empty() {
        hypervisors = match format.as_deref() {
            // qcow2/raw/vmdk images run on KVM; simulator hosts accept them too.
            Some("qcow2") | Some("raw") | Some("vmdk") => vec!["KVM".into(), "Simulator".into()],
            _ => vec!["KVM".into(), "Simulator".into()],
        };
    }
    let mut data_volumes: Vec<DataVol> =
        req.data_disk_sizes.iter().map(|s| DataVol { uuid: new_uuid(), size: *s, offering: None }).collect();
    for o in &req.data_disk_offering_uuids {
        data_volumes.push(DataVol {
            uuid: new_uuid(),
            size: offering_size.get(o).copied().unwrap_or(0),
            offering: Some(o.clone()),
        });
    }
    let allocator = if req.host_uuid.is_some() {
        "DesignatedHostAllocatorStrategy".to_string()
    } else {
        allocator.unwrap_or_else(|| "DesignatedHostAllocatorStrategy".into())
    };
    let strategy = req.strategy.clone().unwrap_or_else(|| "InstantStart".into());
    Ok(Ctx {
        vm_uuid: msg.resource_uuid(),
        name: req.name.clone(),
        description: req.description.clone(),
        account_uuid: msg.account_uuid().to_string(),
        zone_uuid: zone,
        cluster_uuid: cluster,
        designated_host: req.host_uuid.clone(),
        image_uuid: req.image_uuid.clone(),
        instance_offering_uuid: req.instance_offering_uuid.clone(),
        cpu_num,
        cpu_speed,
        memory_size,
        reserved_memory_size: reserved,
        platform,
        guest_os_type: guest_os,
        architecture: arch,
        vm_type: ty,
        allocator_strategy: allocator,
        strategy,
        hypervisors,
        primary_storage_for_root: req.primary_storage_uuid_for_root_volume.clone(),
        root_volume_uuid: new_uuid(),
        root_size,
        root_actual_size: image_actual,
        root_disk_offering: req.root_disk_offering_uuid.clone(),
        data_volumes,
        cdrom_uuid: new_uuid(),
        default_l3,
        nics: req.l3_network_uuids.iter().map(|l3| Nic { uuid: new_uuid(), l3: l3.clone() }).collect(),
        user_tags: msg.user_tags(),
        host: None,
        ps: None,
    })
}

// ---------------------------------------------------------------------------------------
// The saga

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DataVol {
    uuid: String,
    size: i64,
    offering: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Nic {
    uuid: String,
    l3: String,
}

/// Everything the creation saga needs, ids included; stored with its progress.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ctx {
    vm_uuid: String,
    name: String,
    description: Option<String>,
    account_uuid: String,
    zone_uuid: Option<String>,
    cluster_uuid: Option<String>,
    designated_host: Option<String>,
    image_uuid: Option<String>,
    instance_offering_uuid: Option<String>,
    cpu_num: i64,
    cpu_speed: i64,
    memory_size: i64,
    reserved_memory_size: Option<i64>,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    vm_type: String,
    allocator_strategy: String,
    strategy: String,
    hypervisors: Vec<String>,
    primary_storage_for_root: Option<String>,
    root_volume_uuid: String,
    root_size: i64,
    root_actual_size: i64,
    root_disk_offering: Option<String>,
    data_volumes: Vec<DataVol>,
    cdrom_uuid: String,
    default_l3: Option<String>,
    /// one NIC per L3 network, device ids in this order
    nics: Vec<Nic>,
    user_tags: Vec<String>,
    /// the host chosen (set by allocate-host)
    host: Option<String>,
    /// the primary storage chosen (set by allocate-primary-storage)
    ps: Option<String>,
}

impl Ctx {
    fn disk_total(&self) -> i64 {
        self.root_size + self.data_volumes.iter().map(|d| d.size).sum::<i64>()
    }
}

pub static CREATE_VM: SagaDef<Ctx> = SagaDef {
    kind: "create-vm",
    steps: &[
        Step { name: "create-vm-record", run: record_do, undo: record_undo },
        Step { name: "allocate-host", run: host_do, undo: host_undo },
        Step { name: "allocate-primary-storage", run: ps_do, undo: ps_undo },
        Step { name: "create-volumes", run: volumes_do, undo: volumes_undo },
        Step { name: "allocate-nics", run: nics_do, undo: nics_undo },
        Step { name: "create-cdrom", run: cdrom_do, undo: cdrom_undo },
        Step { name: "instantiate-on-host", run: instantiate_do, undo: instantiate_undo },
        Step { name: "finish", run: finish_do, undo: saga::nothing },
    ],
};

/// `JustCreate`: only the record.
pub static JUST_CREATE: SagaDef<Ctx> =
    SagaDef { kind: "create-vm-just", steps: &[Step { name: "create-vm-record", run: record_do, undo: record_undo }] };

/// Unwind a stored saga of one of this module's kinds; `Ok(false)` for an unknown kind.
pub async fn unwind_saga(app: &App, kind: &str, id: &str, step: i64, state: &str, data: &str) -> Result<bool> {
    let def = match kind {
        "create-vm" => &CREATE_VM,
        "create-vm-just" => &JUST_CREATE,
        _ => return Ok(false),
    };
    saga::unwind_row(app, def, id, step, state, data).await?;
    Ok(true)
}

fn record_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let row = tx
            .fetch_optional(
                "UPDATE vm_internal_id SET next_value = next_value + 1 WHERE id = 1 RETURNING next_value",
                &[],
            )
            .await?
            .ok_or_else(|| Error::Internal("the vm internal id sequence is missing".into()))?;
        let internal_id: i64 = row.try_get(0)?;
        let now = now_ms();
        let state = if c.strategy == "JustCreate" { "Created" } else { "Starting" };
        tx.execute(
            "INSERT INTO vm_instance (uuid, name, description, zone_uuid, cluster_uuid, image_uuid, instance_offering_uuid, \
             platform, architecture, type, memory_size, reserved_memory_size, cpu_num, cpu_speed, allocator_strategy, state, \
             internal_id, guest_os_type, create_date, last_op_date, reserved_cpu, reserved_memory, reserved_ps_size, \
             default_l3_network_uuid) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, 0, 0, 0, $20)",
            &[
                Val::from(c.vm_uuid.as_str()),
                Val::from(c.name.as_str()),
                Val::from(c.description.clone()),
                Val::from(c.zone_uuid.clone()),
                Val::from(c.cluster_uuid.clone()),
                Val::from(c.image_uuid.clone()),
                Val::from(c.instance_offering_uuid.clone()),
                Val::from(c.platform.clone()),
                Val::from(c.architecture.clone()),
                Val::from(c.vm_type.as_str()),
                Val::I(c.memory_size),
                Val::from(c.reserved_memory_size),
                Val::I(c.cpu_num),
                Val::I(c.cpu_speed),
                Val::from(c.allocator_strategy.as_str()),
                Val::from(state),
                Val::I(internal_id),
                Val::from(c.guest_os_type.clone()),
                Val::I(now),
                Val::from(c.default_l3.clone()),
            ],
        )
        .await?;
        super::own(tx, &c.vm_uuid, VM.vo, &c.account_uuid).await?;
        super::tag::attach_create_tags(tx, &c.vm_uuid, VM.vo, &[], &c.user_tags).await?;
        Ok(())
    })
}

fn record_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        super::tag::delete_for_resource(tx, &c.vm_uuid).await?;
        super::disown(tx, &c.vm_uuid).await?;
        Ok(())
    })
}

fn in_list(col: &str, first: usize, n: usize) -> String {
    let ps: Vec<String> = (0..n).map(|i| format!("${}", first + i)).collect();
    format!("{col} IN ({})", ps.join(", "))
}

fn host_alloc_error(details: String) -> Error {
    Error::Api(ErrorCode::new(HOST_ALLOCATION_1000, details))
}

/// Host allocation (facts 6.1): filters in SQL, sort by strategy, then the first host whose
/// atomic reservation succeeds.
fn host_do<'a>(app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // location + state + hypervisor
        let mut vals: Vec<Val> = Vec::new();
        let mut base = String::from("h.state = 'Enabled' AND h.status = 'Connected'");
        if let Some(h) = &c.designated_host {
            vals.push(Val::from(h.as_str()));
            base += &format!(" AND h.uuid = ${}", vals.len());
        } else if let Some(cl) = &c.cluster_uuid {
            vals.push(Val::from(cl.as_str()));
            base += &format!(" AND h.cluster_uuid = ${}", vals.len());
        } else if let Some(z) = &c.zone_uuid {
            vals.push(Val::from(z.as_str()));
            base += &format!(" AND h.zone_uuid = ${}", vals.len());
        }
        base += &format!(" AND {}", in_list("h.hypervisor_type", vals.len() + 1, c.hypervisors.len()));
        vals.extend(c.hypervisors.iter().map(|h| Val::from(h.as_str())));
        for l3 in c.nics.iter().map(|n| n.l3.as_str()) {
            vals.push(Val::from(l3));
            base += &format!(
                " AND EXISTS (SELECT 1 FROM l3_network l JOIN l2_network_cluster_ref r ON r.l2_network_uuid = l.l2_network_uuid \
                 WHERE l.uuid = ${} AND r.cluster_uuid = h.cluster_uuid)",
                vals.len()
            );
        }
        let count = |sql: String, vals: Vec<Val>| async move {
            let row = tx_count(&app.db, &sql, &vals).await?;
            Ok::<i64, Error>(row)
        };
        if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
            return Err(host_alloc_error(format!(
                "no host having state=Enabled status=Connected hypervisorType={} found",
                c.hypervisors.join(",")
            )));
        }
        if let Some(img) = &c.image_uuid {
            vals.push(Val::from(img.as_str()));
            base += &format!(
                " AND EXISTS (SELECT 1 FROM image_backup_storage_ref ibr JOIN backup_storage_zone_ref bz \
                 ON bz.backup_storage_uuid = ibr.backup_storage_uuid JOIN backup_storage b ON b.uuid = ibr.backup_storage_uuid \
                 WHERE ibr.image_uuid = ${} AND ibr.status = 'Ready' AND bz.zone_uuid = h.zone_uuid AND b.status = 'Connected')",
                vals.len()
            );
            if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
                return Err(host_alloc_error(format!(
                    "no host found in zones that attaches to backup storage where image[{img}] is on"
                )));
            }
        }
        vals.push(Val::I(c.cpu_num));
        vals.push(Val::I(c.memory_size));
        base += &format!(
            " AND h.available_cpu >= ${} AND h.available_memory >= ${m} AND h.total_physical_memory > ${m}",
            vals.len() - 1,
            m = vals.len()
        );
        if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
            return Err(host_alloc_error(format!(
                "no host having cpu[{}], memory[{} bytes] found",
                c.cpu_num, c.memory_size
            )));
        }
        let disk = c.disk_total();
        vals.push(Val::I(disk));
        let mut ps_filter = format!("p.available_capacity >= ${}", vals.len());
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            ps_filter += &format!(" AND p.uuid = ${}", vals.len());
        }
        base += &format!(
            " AND EXISTS (SELECT 1 FROM primary_storage_cluster_ref r JOIN primary_storage p ON p.uuid = r.primary_storage_uuid \
             WHERE r.cluster_uuid = h.cluster_uuid AND p.state = 'Enabled' AND p.status = 'Connected' AND {ps_filter})"
        );
        let order = if c.allocator_strategy.contains("LeastVmPreferred") {
            "(SELECT COUNT(*) FROM vm_instance v WHERE v.host_uuid = h.uuid), random()"
        } else {
            "random()"
        };
        let rows = tx
            .fetch_all(&format!("SELECT h.uuid, h.cluster_uuid, h.zone_uuid, h.hypervisor_type FROM host h WHERE {base} ORDER BY {order}"), &vals)
            .await?;
        if rows.is_empty() {
            return Err(host_alloc_error(format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {disk} bytes]"
            )));
        }
        for row in rows {
            let h: String = row.try_get(0)?;
            if !super::host::reserve(app, tx, &h, c.cpu_num, c.memory_size).await? {
                continue;
            }
            let cluster: String = row.try_get(1)?;
            let zone: String = row.try_get(2)?;
            let hv: String = row.try_get(3)?;
            tx.execute(
                "UPDATE vm_instance SET host_uuid = $1, cluster_uuid = $2, zone_uuid = $3, hypervisor_type = $4, \
                 reserved_host_uuid = $1, reserved_cpu = $5, reserved_memory = $6, last_op_date = $7 WHERE uuid = $8",
                &[
                    Val::from(h.as_str()),
                    Val::from(cluster.as_str()),
                    Val::from(zone.as_str()),
                    Val::from(hv),
                    Val::I(c.cpu_num),
                    Val::I(c.memory_size),
                    Val::I(now_ms()),
                    Val::from(c.vm_uuid.as_str()),
                ],
            )
            .await?;
            c.host = Some(h);
            c.cluster_uuid = Some(cluster);
            c.zone_uuid = Some(zone);
            return Ok(());
        }
        Err(host_alloc_error(format!("no host having cpu[{}], memory[{} bytes] found", c.cpu_num, c.memory_size)))
    })
}

async fn tx_count(db: &crate::db::Db, sql: &str, vals: &[Val]) -> Result<i64> {
    let row = db.fetch_optional(sql, vals).await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>(0)?,
        None => 0,
    })
}

/// Give back the host capacity the VM row says it holds (compare-and-set: once only).
async fn release_host(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT reserved_host_uuid, reserved_cpu, reserved_memory FROM vm_instance WHERE uuid = $1",
            &[Val::from(vm_uuid)],
        )
        .await?
    else {
        return Ok(());
    };
    let Some(h): Option<String> = row.try_get(0)? else { return Ok(()) };
    let cpu: i64 = row.try_get(1)?;
    let mem: i64 = row.try_get(2)?;
    let n = tx
        .execute(
            "UPDATE vm_instance SET reserved_host_uuid = NULL, reserved_cpu = 0, reserved_memory = 0 \
             WHERE uuid = $1 AND reserved_host_uuid = $2 AND reserved_cpu = $3 AND reserved_memory = $4",
            &[Val::from(vm_uuid), Val::from(h.as_str()), Val::I(cpu), Val::I(mem)],
        )
        .await?;
    if n == 1 {
        super::host::release(tx, &h, cpu, mem).await?;
    }
    Ok(())
}

fn host_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_host(tx, &c.vm_uuid).await?;
        tx.execute(
            "UPDATE vm_instance SET host_uuid = NULL, hypervisor_type = NULL WHERE uuid = $1",
            &[Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        c.host = None;
        Ok(())
    })
}

/// Primary storage for the volumes (facts 6.2): Enabled + Connected, attached to the host's
/// cluster, enough capacity, most available first; the reservation is one UPDATE.
fn ps_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let cluster = c.cluster_uuid.clone().unwrap_or_default();
        let size = c.disk_total();
        let mut vals = vec![Val::from(cluster.as_str()), Val::I(size)];
        let mut filter = String::new();
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            filter = " AND p.uuid = $3".into();
        }
        let rows = tx
            .fetch_all(
                &format!(
                    "SELECT p.uuid FROM primary_storage p JOIN primary_storage_cluster_ref r ON r.primary_storage_uuid = p.uuid \
                     WHERE r.cluster_uuid = $1 AND p.state = 'Enabled' AND p.status = 'Connected' \
                     AND p.available_capacity >= $2{filter} ORDER BY p.available_capacity DESC, p.uuid"
                ),
                &vals,
            )
            .await?;
        let now = now_ms();
        for row in rows {
            let p: String = row.try_get(0)?;
            let n = tx
                .execute(
                    "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                     WHERE uuid = $3 AND available_capacity >= $1 AND state = 'Enabled' AND status = 'Connected'",
                    &[Val::I(size), Val::I(now), Val::from(p.as_str())],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_uuid = $1, reserved_ps_size = $2 WHERE uuid = $3",
                    &[Val::from(p.as_str()), Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
                c.ps = Some(p);
                return Ok(());
            }
        }
        Err(Error::Api(ErrorCode::new(
            PS_1000,
            format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {size} bytes] \
                 in cluster[uuid:{cluster}]"
            ),
        )))
    })
}

/// Give back the primary-storage capacity still held on the VM row (compare-and-set).
async fn release_ps(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT reserved_ps_uuid, reserved_ps_size FROM vm_instance WHERE uuid = $1",
            &[Val::from(vm_uuid)],
        )
        .await?
    else {
        return Ok(());
    };
    let Some(p): Option<String> = row.try_get(0)? else { return Ok(()) };
    let size: i64 = row.try_get(1)?;
    let n = tx
        .execute(
            "UPDATE vm_instance SET reserved_ps_uuid = NULL, reserved_ps_size = 0 \
             WHERE uuid = $1 AND reserved_ps_uuid = $2 AND reserved_ps_size = $3",
            &[Val::from(vm_uuid), Val::from(p.as_str()), Val::I(size)],
        )
        .await?;
    if n == 1 && size > 0 {
        tx.execute(
            "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 WHERE uuid = $3",
            &[Val::I(size), Val::I(now_ms()), Val::from(p.as_str())],
        )
        .await?;
    }
    Ok(())
}

fn ps_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_ps(tx, &c.vm_uuid).await?;
        c.ps = None;
        Ok(())
    })
}

/// Root and data volume rows; each takes its share of the VM's primary-storage reservation.
fn volumes_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let ps = c.ps.clone().ok_or_else(|| Error::Internal("no primary storage allocated".into()))?;
        let url: String = tx
            .fetch_optional("SELECT url FROM primary_storage WHERE uuid = $1", &[Val::from(ps.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .unwrap_or_default();
        let url = url.trim_end_matches('/').to_string();
        let now = now_ms();
        let mut vols = vec![(
            c.root_volume_uuid.clone(),
            format!("ROOT-for-{}", c.name),
            "Root",
            c.root_size,
            c.root_actual_size,
            c.root_disk_offering.clone(),
            c.image_uuid.clone(),
            0i64,
        )];
        for (i, d) in c.data_volumes.iter().enumerate() {
            vols.push((
                d.uuid.clone(),
                format!("DATA-for-{}", c.name),
                "Data",
                d.size,
                0,
                d.offering.clone(),
                None,
                i as i64 + 1,
            ));
        }
        for (uuid, name, ty, size, actual, offering, image, device) in vols {
            let dir = if ty == "Root" { "rootVolumes" } else { "dataVolumes" };
            let path = format!("{url}/{dir}/acct-{}/vol-{uuid}/{uuid}.qcow2", c.account_uuid);
            tx.execute(
                "INSERT INTO volume (uuid, name, primary_storage_uuid, vm_instance_uuid, disk_offering_uuid, root_image_uuid, \
                 install_path, type, format, size, actual_size, device_id, state, status, create_date, last_op_date, \
                 is_shareable, last_attach_date, reserved_size) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'qcow2', $9, $10, $11, 'Enabled', 'Ready', $12, $12, 0, $12, $9)",
                &[
                    Val::from(uuid.as_str()),
                    Val::from(name),
                    Val::from(ps.as_str()),
                    Val::from(c.vm_uuid.as_str()),
                    Val::from(offering),
                    Val::from(image),
                    Val::from(path),
                    Val::from(ty),
                    Val::I(size),
                    Val::I(actual),
                    Val::I(device),
                    Val::I(now),
                ],
            )
            .await?;
            super::own(tx, &uuid, VOLUME.vo, &c.account_uuid).await?;
            tx.execute(
                "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size - $1 WHERE uuid = $2",
                &[Val::I(size), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        }
        tx.execute(
            "UPDATE vm_instance SET root_volume_uuid = $1 WHERE uuid = $2",
            &[Val::from(c.root_volume_uuid.as_str()), Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        Ok(())
    })
}

fn volumes_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let mut uuids = vec![c.root_volume_uuid.clone()];
        uuids.extend(c.data_volumes.iter().map(|d| d.uuid.clone()));
        for u in uuids {
            let Some(row) = tx
                .fetch_optional(
                    "SELECT reserved_size FROM volume WHERE uuid = $1 AND vm_instance_uuid = $2",
                    &[Val::from(u.as_str()), Val::from(c.vm_uuid.as_str())],
                )
                .await?
            else {
                continue;
            };
            let size: i64 = row.try_get(0)?;
            let n = tx.execute("DELETE FROM volume WHERE uuid = $1", &[Val::from(u.as_str())]).await?;
            if n == 1 {
                // back to the VM's hold; the primary-storage undo returns it to the storage
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size + $1 WHERE uuid = $2",
                    &[Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
            }
            super::tag::delete_for_resource(tx, &u).await?;
            super::disown(tx, &u).await?;
        }
        tx.execute("UPDATE vm_instance SET root_volume_uuid = NULL WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?;
        Ok(())
    })
}

/// One empty CD-ROM drive (upstream `vm.vmDefaultCdRomNum` = 1), device 0.
fn cdrom_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute(
            "INSERT INTO vm_cdrom (uuid, vm_instance_uuid, device_id, name, create_date, last_op_date) \
             VALUES ($1, $2, 0, $3, $4, $4)",
            &[
                Val::from(c.cdrom_uuid.as_str()),
                Val::from(c.vm_uuid.as_str()),
                Val::S(format!("vm-{}-cdRom", c.vm_uuid)),
                Val::I(now_ms()),
            ],
        )
        .await?;
        Ok(())
    })
}

fn cdrom_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_cdrom WHERE vm_instance_uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        Ok(())
    })
}

/// Create the VM on its host. Simulator hosts run it by definition; KVM hosts need the host
/// agent's VM protocol, which is not there yet.
fn instantiate_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let h = c.host.clone().unwrap_or_default();
        let hv: Option<String> = tx
            .fetch_optional("SELECT hypervisor_type FROM host WHERE uuid = $1", &[Val::from(h.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        match hv.as_deref() {
            Some("Simulator") => Ok(()),
            other => Err(Error::Api(ErrorCode::new(
                HOST_1005,
                format!(
                    "cannot start vm[uuid:{}] on host[uuid:{h}, hypervisorType:{}]: creating VMs on this hypervisor is not supported yet",
                    c.vm_uuid,
                    other.unwrap_or("unknown")
                ),
            ))),
        }
    })
}

fn instantiate_undo<'a>(_app: &'a App, _tx: &'a mut WriteTx, _c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    // Destroying a simulated VM has nothing to do.
    Box::pin(async { Ok(()) })
}

/// The final state: Running on its host (InstantStart), or Stopped with the host's capacity
/// given back and only lastHostUuid kept (CreateStopped).
fn finish_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let now = now_ms();
        let v = Val::from(c.vm_uuid.as_str());
        if c.strategy == "CreateStopped" {
            release_host(tx, &c.vm_uuid).await?;
            tx.execute(
                "UPDATE vm_instance SET state = 'Stopped', last_host_uuid = host_uuid, host_uuid = NULL, last_op_date = $1 \
                 WHERE uuid = $2",
                &[Val::I(now), v],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE vm_instance SET state = 'Running', last_host_uuid = host_uuid, last_op_date = $1 WHERE uuid = $2",
                &[Val::I(now), v],
            )
            .await?;
        }
        Ok(())
    })
}

/// Eight random bytes (from a v4 uuid).
fn random_bytes() -> [u8; 8] {
    let u = new_uuid();
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(u.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// A MAC in upstream's scheme: `fa:` + four random bytes + the device id.
fn mac_for(device: i64) -> String {
    let r = random_bytes();
    format!("fa:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2], r[3], device & 0xff)
}

pub const L3_1000: Code = Code { code: "L3.1000", description: "Unable to allocate an ip address from L3Network" };

/// Take a free address of `l3` (random strategy): a random free candidate of a random range is
/// inserted into `used_ip`, whose UNIQUE (l3, ipInLong) makes a double allocation impossible;
/// a conflict means someone else took it, so pick again.
async fn allocate_ip(
    tx: &mut WriteTx,
    l3: &str,
    nic_uuid: &str,
    ip_uuid: &str,
) -> Result<(String, String, Option<String>)> {
    let ranges = tx
        .fetch_all(
            "SELECT uuid, start_ip_long, end_ip_long, netmask, gateway FROM ip_range \
             WHERE l3_network_uuid = $1 AND ip_version = 4 AND ip_range_type = 'Normal' ORDER BY random()",
            &[Val::from(l3)],
        )
        .await?;
    for r in ranges {
        let range: String = r.try_get(0)?;
        let start: i64 = r.try_get(1)?;
        let end: i64 = r.try_get(2)?;
        let netmask: String = r.try_get(3)?;
        let gateway: Option<String> = r.try_get(4)?;
        let gw = gateway.as_deref().and_then(super::l3::ipv4).map(i64::from);
        for _attempt in 0..16 {
            let used: std::collections::HashSet<i64> = tx
                .fetch_all(
                    "SELECT ip_in_long FROM used_ip WHERE l3_network_uuid = $1 AND ip_in_long >= $2 AND ip_in_long <= $3",
                    &[Val::from(l3), Val::I(start), Val::I(end)],
                )
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<std::result::Result<_, _>>()?;
            let free: Vec<i64> = (start..=end).filter(|n| !used.contains(n) && Some(*n) != gw).take(256).collect();
            if free.is_empty() {
                break;
            }
            let pick = free[(u64::from_le_bytes(random_bytes()) % free.len() as u64) as usize];
            let ip = super::l3::ipv4_str(pick as u32);
            let n = tx
                .execute(
                    "INSERT INTO used_ip (uuid, ip_range_uuid, l3_network_uuid, ip_version, ip, ip_in_long, netmask, gateway, \
                     used_for, vm_nic_uuid, create_date, last_op_date) VALUES ($1, $2, $3, 4, $4, $5, $6, $7, NULL, $8, $9, $9) \
                     ON CONFLICT (l3_network_uuid, ip_in_long) DO NOTHING",
                    &[
                        Val::from(ip_uuid),
                        Val::from(range.as_str()),
                        Val::from(l3),
                        Val::from(ip.as_str()),
                        Val::I(pick),
                        Val::from(netmask.as_str()),
                        Val::from(gateway.clone()),
                        Val::from(nic_uuid),
                        Val::I(now_ms()),
                    ],
                )
                .await?;
            if n == 1 {
                return Ok((ip, netmask, gateway));
            }
        }
    }
    let name: String = tx
        .fetch_optional("SELECT name FROM l3_network WHERE uuid = $1", &[Val::from(l3)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_default();
    Err(Error::Api(ErrorCode::new(
        L3_1000,
        format!(
            "IP allocator strategy[RandomIpAllocatorStrategy] failed, because no ip is available in this l3Network[name:{name}, uuid:{l3}]"
        ),
    )))
}

/// NICs in device-id order, each with a unique `fa:` MAC (UNIQUE constraint, retried) and an
/// address of its L3 network.
fn nics_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let internal_id: i64 = tx
            .fetch_optional("SELECT internal_id FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0);
        let hv: Option<String> = tx
            .fetch_optional("SELECT hypervisor_type FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten();
        let now = now_ms();
        for (device, nic) in c.nics.iter().enumerate() {
            let device = device as i64;
            let mut inserted = false;
            for _ in 0..32 {
                let n = tx
                    .execute(
                        "INSERT INTO vm_nic (uuid, vm_instance_uuid, l3_network_uuid, mac, hypervisor_type, ip_version, \
                         driver_type, internal_name, device_id, type, state, create_date, last_op_date) \
                         VALUES ($1, $2, $3, $4, $5, 4, 'virtio', $6, $7, 'VNIC', 'enable', $8, $8) ON CONFLICT (mac) DO NOTHING",
                        &[
                            Val::from(nic.uuid.as_str()),
                            Val::from(c.vm_uuid.as_str()),
                            Val::from(nic.l3.as_str()),
                            Val::S(mac_for(device)),
                            Val::from(hv.clone()),
                            Val::S(format!("vnic{internal_id}.{device}")),
                            Val::I(device),
                            Val::I(now),
                        ],
                    )
                    .await?;
                if n == 1 {
                    inserted = true;
                    break;
                }
            }
            if !inserted {
                return Err(Error::code(
                    Code { code: "VM.1009", description: "Unable to allocate a mac address for vm's nic" },
                    format!("cannot find a free mac address for the nic[deviceId:{device}] of vm[uuid:{}]", c.vm_uuid),
                ));
            }
            let ip_uuid = new_uuid();
            let (ip, netmask, gateway) = allocate_ip(tx, &nic.l3, &nic.uuid, &ip_uuid).await?;
            tx.execute(
                "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4 WHERE uuid = $5",
                &[
                    Val::from(ip_uuid.as_str()),
                    Val::from(ip),
                    Val::from(netmask),
                    Val::from(gateway),
                    Val::from(nic.uuid.as_str()),
                ],
            )
            .await?;
        }
        Ok(())
    })
}

fn nics_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for nic in &c.nics {
            tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
            tx.execute("DELETE FROM vm_nic WHERE uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn create_vm(app: App, msg: Msg) -> Result<Reply> {
    let mut req: CreateVm = msg.parse()?;
    let uuid = msg.resource_uuid();
    if msg.replay {
        saga::unwind_for_job(&app, &msg.job_uuid).await?;
    }
    {
        let mut tx = app.db.begin_write().await?;
        if !super::is_new(&mut tx, &VM, &uuid, &msg).await? {
            drop(tx);
            return reply(&app, &uuid).await;
        }
    }
    let ctx = check_and_plan(&app, &msg, &mut req).await?;
    let def = if ctx.strategy == "JustCreate" { &JUST_CREATE } else { &CREATE_VM };
    if let Err(e) = saga::run(&app, def, &msg.job_uuid, &uuid, ctx).await {
        let cause = e.to_error_code();
        let details = cause.details.clone().unwrap_or_default();
        return Err(Error::Api(ErrorCode::new(rzstack_api::codes::SYS_1006, details).with_cause(cause)));
    }
    reply(&app, &uuid).await
}

const STRATEGIES: &[&str] = &["InstantStart", "JustCreate", "CreateStopped"];
const PLATFORMS: &[&str] = &["Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio"];
const ARCHITECTURES: &[&str] = &["x86_64", "aarch64", "mips64el", "loongarch64"];

pub static APIS: &[ApiDef] = &[
    ApiDef {
        name: "CreateVmInstance",
        method: Method::Post,
        path: "/vm-instances",
        optional_paths: &[],
        body: Body::Params,
        kind: Kind::Async { timeout_ms: 12 * HOURS },
        auth: true,
        create: true,
        params: &[
            Param::str("name").required().max(255),
            Param::str("instanceOfferingUuid").resource(&INSTANCE_OFFERING),
            Param::int("cpuNum"),
            Param::int("memorySize"),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::str("imageUuid").resource(&IMAGE).no_empty_string(),
            Param::list("l3NetworkUuids").resource(&super::l3::L3_NETWORK),
            Param::str("vmNicParams"),
            Param::str("type").values(&["UserVm", "ApplianceVm"]),
            Param::str("rootDiskOfferingUuid").resource(&DISK_OFFERING),
            Param::int("rootDiskSize"),
            Param::list("dataDiskSizes"),
            Param::list("dataDiskOfferingUuids").resource(&DISK_OFFERING),
            Param::str("zoneUuid").resource(&ZONE),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
            Param::str("primaryStorageUuidForRootVolume").resource(&PRIMARY_STORAGE),
            Param::str("description").max(2048),
            Param::str("defaultL3NetworkUuid"),
            Param::str("strategy").values(STRATEGIES),
            Param::list("rootVolumeSystemTags"),
            Param::list("dataVolumeSystemTags"),
            Param::map("dataVolumeSystemTagsOnIndex"),
            Param::list("sshKeyPairUuids"),
            Param::str("platform").values(PLATFORMS),
            Param::str("guestOsType").max(255),
            Param::str("architecture").max(32).values(ARCHITECTURES),
            Param::bool("virtio"),
            Param::objects("diskAOs"),
            Param::list("dataVolumeTemplateUuids"),
            Param::map("devices"),
        ],
        tags: &[],
        handler: Some(|a, m| boxed(create_vm(a, m))),
    },
    ApiDef {
        name: "QueryVmInstance",
        method: Method::Get,
        path: "/vm-instances",
        optional_paths: &["/vm-instances/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&VM),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
    ApiDef {
        name: "QueryVmNic",
        method: Method::Get,
        path: "/vm-instances/nics",
        optional_paths: &["/vm-instances/nics/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&VM_NIC),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
];
