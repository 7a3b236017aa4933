//! VM instances (upstream `VmInstanceVO`, `VmNicVO`, `VmCdRomVO`): CreateVmInstance as a saga,
//! QueryVmInstance, QueryVmNic.
//!
//! Creation (facts 4.3): the upstream interceptor checks run first, in upstream order; then
//! the saga [`CREATE_VM`]: VM record → host (atomic CPU/memory reservation) → primary storage
//! (atomic capacity reservation, held on the VM row until the volumes take it) → root and
//! data volume rows → CD-ROM → instantiate on the host → final state. `JustCreate` runs only
//! the first step ([`JUST_CREATE`]). Every step's undo gives back exactly what the step took,
//! guarded by a compare-and-set on the row that records it, so running it twice is harmless.

use crate::api::{boxed, ApiDef, Msg, Reply, HOURS};
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

mod actions;
mod checks;
mod console;
mod create;
mod kvm;
mod lifecycle;
mod nics;
mod steps;
pub mod sync;

use checks::*;
use create::*;
pub use kvm::tap_name;
pub use lifecycle::start_expunge_task;
use lifecycle::*;
use nics::*;
pub use steps::*;

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

/// A VM's TPM (upstream `TpmVO`/`TpmInventory`, `GET /tpms`). `keyProviderUuid` is ours: the
/// key provider asked for at creation (upstream keeps it in its encrypted-resource-key tables,
/// which this node does not have); upstream's `hostRefs` come with the host agent.
pub static TPM: ResourceDef = ResourceDef {
    inventory: "TpmInventory",
    vo: "TpmVO",
    class: "org.zstack.header.tpm.entity.TpmInventory",
    table: "tpm",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("keyProviderUuid", "key_provider_uuid", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("TpmVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &VM, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&VM, inv)),
        None => Err(Error::not_found(format!("vm instance[uuid:{uuid}] is not found"))),
    }
}

const STRATEGIES: &[&str] = &["InstantStart", "JustCreate", "CreateStopped"];
const PLATFORMS: &[&str] = &["Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio"];
const ARCHITECTURES: &[&str] = &["x86_64", "aarch64", "mips64el", "loongarch64"];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateVmInstance", "/vm-instances")
        .timeout(12 * HOURS)
        .params(&[
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
            Param::list("sshKeyPairUuids").resource(&super::ssh_key::SSH_KEY_PAIR),
            Param::str("platform").values(PLATFORMS),
            Param::str("guestOsType").max(255),
            Param::str("architecture").max(32).values(ARCHITECTURES),
            Param::bool("virtio"),
            Param::objects("diskAOs"),
            Param::list("dataVolumeTemplateUuids").resource(&IMAGE),
            Param::map("devices"),
        ])
        .tags(VM_TAGS)
        .handler(|a, m| boxed(create_vm(a, m))),
    ApiDef::create("CreateVmInstanceFromVolumeSnapshot", "/vm-instances/from/volume-snapshots/{volumeSnapshotUuid}")
        .timeout(72 * HOURS)
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("instanceOfferingUuid").resource(&INSTANCE_OFFERING),
            Param::int("cpuNum"),
            Param::int("memorySize"),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::list("l3NetworkUuids").resource(&super::l3::L3_NETWORK),
            Param::str("vmNicParams"),
            Param::str("type").values(&["UserVm", "ApplianceVm"]),
            Param::str("volumeSnapshotUuid").required().resource(&super::volume::VOLUME_SNAPSHOT),
            Param::str("platform").values(PLATFORMS),
            Param::str("zoneUuid").resource(&ZONE),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
            Param::str("primaryStorageUuid").resource(&PRIMARY_STORAGE),
            Param::str("defaultL3NetworkUuid"),
            Param::str("strategy").values(&["InstantStart", "CreateStopped"]),
            Param::list("rootVolumeSystemTags"),
        ])
        .tags(VM_TAGS)
        .handler(|a, m| boxed(create_vm_from_snapshot(a, m))),
    ApiDef::action("StartVmInstance", "/vm-instances/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VM),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
        ])
        .handler(|a, m| boxed(start_vm(a, m))),
    ApiDef::action("StopVmInstance", "/vm-instances/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VM),
            Param::str("type").values(&["grace", "cold"]),
            Param::str("stopHA").values(&["true"]),
        ])
        .handler(|a, m| boxed(stop_vm(a, m))),
    ApiDef::action("RebootVmInstance", "/vm-instances/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(reboot_vm(a, m))),
    ApiDef::delete("DestroyVmInstance", "/vm-instances/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&VM).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(destroy_vm(a, m))),
    ApiDef::action("RecoverVmInstance", "/vm-instances/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(recover_vm(a, m))),
    ApiDef::action("ExpungeVmInstance", "/vm-instances/{uuid}/actions")
        .timeout(3 * HOURS)
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(expunge_vm(a, m))),
    ApiDef::action("UpdateVmInstance", "/vm-instances/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VM),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("state").values(&["Stopped", "Running"]),
            Param::str("defaultL3NetworkUuid").resource(&super::l3::L3_NETWORK),
            Param::str("platform").values(PLATFORMS),
            Param::int("cpuNum").range(1, 1024),
            Param::int("memorySize").range(1, i64::MAX),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::str("guestOsType").max(255),
        ])
        .handler(|a, m| boxed(update_vm(a, m))),
    ApiDef::query("QueryVmInstance", "/vm-instances", &VM).optional_paths(&["/vm-instances/{uuid}"]),
    ApiDef::query("QueryTpm", "/tpms", &TPM).optional_paths(&["/tpms/{uuid}"]),
    ApiDef::query("QueryVmNic", "/vm-instances/nics", &VM_NIC).optional_paths(&["/vm-instances/nics/{uuid}"]),
    ApiDef::action("ChangeInstanceOffering", "/vm-instances/{vmInstanceUuid}/actions")
        .params(&[
            Param::str("vmInstanceUuid").required().resource(&VM),
            Param::str("instanceOfferingUuid").required().resource(&INSTANCE_OFFERING),
        ])
        .handler(|a, m| boxed(actions::change_instance_offering(a, m))),
    ApiDef::post("AttachL3NetworkToVm", "/vm-instances/{vmInstanceUuid}/l3-networks/{l3NetworkUuid}")
        .params(&[
            Param::str("vmInstanceUuid").required().resource(&VM),
            Param::str("l3NetworkUuid").required().resource(&super::l3::L3_NETWORK),
            Param::str("staticIp"),
            Param::str("driverType"),
            Param::str("customMac"),
            Param::str("vmNicParams"),
        ])
        .handler(|a, m| boxed(actions::attach_l3(a, m))),
    ApiDef::delete("DetachL3NetworkFromVm", "/vm-instances/nics/{vmNicUuid}")
        .params(&[Param::str("vmNicUuid").required().resource(&VM_NIC)])
        .handler(|a, m| boxed(actions::detach_l3(a, m))),
    ApiDef::get("GetVmAttachableL3Network", "/vm-instances/{vmInstanceUuid}/l3-networks-candidates")
        .params(&[Param::str("vmInstanceUuid").required().resource(&VM)])
        .handler(|a, m| boxed(actions::attachable_l3(a, m))),
    ApiDef::action("SetVmStaticIp", "/vm-instances/{vmInstanceUuid}/actions")
        .params(&[
            Param::str("vmInstanceUuid").required().resource(&VM),
            Param::str("l3NetworkUuid").required().resource(&super::l3::L3_NETWORK),
            Param::str("ip"),
            Param::str("ip6"),
            Param::str("netmask"),
            Param::str("gateway"),
            Param::str("ipv6Gateway"),
            Param::str("ipv6Prefix"),
        ])
        .handler(|a, m| boxed(actions::set_static_ip(a, m))),
    ApiDef::post("AttachIsoToVmInstance", "/vm-instances/{vmInstanceUuid}/iso/{isoUuid}")
        .params(&[
            Param::str("vmInstanceUuid").required().resource(&VM),
            Param::str("isoUuid").required().resource(&IMAGE),
        ])
        .handler(|a, m| boxed(actions::attach_iso(a, m))),
    ApiDef::delete("DetachIsoFromVmInstance", "/vm-instances/{vmInstanceUuid}/iso")
        .params(&[Param::str("vmInstanceUuid").required().resource(&VM), Param::str("isoUuid")])
        .handler(|a, m| boxed(actions::detach_iso(a, m))),
    ApiDef::get("GetVmConsoleAddress", "/vm-instances/{uuid}/console-addresses")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(actions::console_address(a, m))),
    ApiDef::action("SetVmConsolePassword", "/vm-instances/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VM), Param::str("consolePassword").required()])
        .handler(|a, m| boxed(console::set_console_password(a, m))),
    ApiDef::delete("DeleteVmConsolePassword", "/vm-instances/{uuid}/console-password")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(console::delete_console_password(a, m))),
    ApiDef::get("GetVmConsolePassword", "/vm-instances/{uuid}/console-passwords")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(console::get_console_password(a, m))),
    ApiDef::action("SetVmBootOrder", "/vm-instances/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VM), Param::list("bootOrder")])
        .handler(|a, m| boxed(console::set_boot_order(a, m))),
    ApiDef::get("GetVmBootOrder", "/vm-instances/{uuid}/boot-orders")
        .params(&[Param::str("uuid").required().resource(&VM)])
        .handler(|a, m| boxed(console::get_boot_order(a, m))),
];
