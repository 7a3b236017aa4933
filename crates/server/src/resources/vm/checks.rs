//! CreateVmInstance: the request, its upstream checks in upstream order, and the plan.

use super::*;

// ---------------------------------------------------------------------------------------
// The request and its checks

#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateVm {
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) instance_offering_uuid: Option<String>,
    pub(super) cpu_num: Option<i64>,
    pub(super) memory_size: Option<i64>,
    pub(super) reserved_memory_size: Option<i64>,
    pub(super) image_uuid: Option<String>,
    #[serde(default)]
    pub(super) l3_network_uuids: Vec<String>,
    #[serde(rename = "type")]
    pub(super) ty: Option<String>,
    pub(super) root_disk_offering_uuid: Option<String>,
    pub(super) root_disk_size: Option<i64>,
    #[serde(default, deserialize_with = "sizes")]
    pub(super) data_disk_sizes: Vec<i64>,
    #[serde(default)]
    pub(super) data_disk_offering_uuids: Vec<String>,
    pub(super) zone_uuid: Option<String>,
    pub(super) cluster_uuid: Option<String>,
    pub(super) host_uuid: Option<String>,
    pub(super) primary_storage_uuid_for_root_volume: Option<String>,
    pub(super) default_l3_network_uuid: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) platform: Option<String>,
    pub(super) guest_os_type: Option<String>,
    pub(super) architecture: Option<String>,
    #[serde(default)]
    pub(super) root_volume_system_tags: Vec<String>,
    #[serde(default)]
    pub(super) data_volume_system_tags: Vec<String>,
    #[serde(default)]
    pub(super) ssh_key_pair_uuids: Vec<String>,
    pub(super) vm_nic_params: Option<String>,
    #[serde(default, rename = "diskAOs")]
    pub(super) disk_aos: Vec<DiskAo>,
    #[serde(default)]
    pub(super) data_volume_template_uuids: Vec<String>,
    #[serde(default)]
    pub(super) data_volume_system_tags_on_index: std::collections::BTreeMap<String, Vec<String>>,
    pub(super) virtio: Option<bool>,
    pub(super) devices: Option<Devices>,
    /// CreateVmInstanceFromVolumeSnapshot: the snapshot the root volume copies
    #[serde(skip)]
    pub(super) snapshot: Option<SnapSrc>,
}

/// One entry of `diskAOs` (upstream `APICreateVmInstanceMsg.DiskAO`).
#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DiskAo {
    #[serde(default)]
    pub(super) boot: bool,
    pub(super) platform: Option<String>,
    pub(super) guest_os_type: Option<String>,
    pub(super) architecture: Option<String>,
    pub(super) primary_storage_uuid: Option<String>,
    #[serde(default)]
    pub(super) size: i64,
    pub(super) template_uuid: Option<String>,
    pub(super) disk_offering_uuid: Option<String>,
    pub(super) source_type: Option<String>,
    pub(super) source_uuid: Option<String>,
    #[serde(default)]
    pub(super) system_tags: Vec<String>,
    pub(super) name: Option<String>,
}

/// An existing volume a diskAO names (`sourceType: VolumeVO`): detached, not shareable, Ready
/// and Enabled (upstream CreateVmInstanceFromVolume's conditions); returns it and its primary storage.
pub(super) async fn source_volume(app: &App, ao: &DiskAo) -> Result<(String, String)> {
    let src = ao.source_uuid.clone().unwrap_or_default();
    if let Some(t) = ao.source_type.as_deref().filter(|t| *t != "VolumeVO") {
        return Err(Error::argerr(format!(
            "diskAOs sourceType[{t}] is not supported by this management node yet: only VolumeVO"
        )));
    }
    let row = one_row(
        app,
        "SELECT vm_instance_uuid, is_shareable, status, state, primary_storage_uuid FROM volume WHERE uuid = $1",
        &src,
    )
    .await?
    .ok_or_else(|| {
        Error::not_found(format!("invalid field[diskAOs.sourceUuid], resource[uuid:{src}, type:VolumeVO] not found"))
    })?;
    if row.try_get::<i64, _>(1)? != 0 {
        return Err(Error::operr("cannot create vm instance from a shareable volume."));
    }
    if opt_str(&row, 0)?.is_some() {
        return Err(Error::operr("could not create vm instance from a attached volume."));
    }
    let status: String = row.try_get(2)?;
    let state: String = row.try_get(3)?;
    let ps = opt_str(&row, 4)?;
    match ps {
        Some(ps) if status == "Ready" && state == "Enabled" => Ok((src, ps)),
        _ => Err(Error::operr(format!("volume[uuid:{src}] could not satisfy conditions[state:Enabled status:Ready]"))),
    }
}

/// One entry of `vmNicParams` (upstream `VmNicParam`), the parts this node honours.
#[derive(Clone, Default)]
pub(super) struct NicParam {
    pub(super) l3: String,
    pub(super) ip: Option<String>,
    pub(super) mac: Option<String>,
    pub(super) netmask: Option<String>,
    pub(super) gateway: Option<String>,
    pub(super) meta_data: Option<String>,
    pub(super) driver: Option<String>,
    pub(super) state: Option<String>,
}

/// NIC drivers upstream supports (`VmInstanceManager.xml` supportNicDriverTypes).
pub(super) const NIC_DRIVERS: &[&str] = &["virtio", "e1000", "rtl8139", "pcnet"];
/// upstream VM_NIC_QOS_MIN / VM_NIC_QOS_MAX
pub(super) const NIC_QOS_MIN: i64 = 8192;
pub(super) const NIC_QOS_MAX: i64 = 32_212_254_720;

/// `vmNicParams`: a JSON array of VmNicParam, checked as upstream `VmNicUtils.validateVmParms`
/// (texts and order); fields this node cannot honour yet (IPv6, QoS, multi-queue, security
/// groups, NIC type) are refused by name, and so is a key VmNicParam does not have.
pub(super) fn parse_nic_params(text: &str, l3s: &[String]) -> Result<Vec<NicParam>> {
    if l3s.is_empty() {
        return Err(Error::argerr("l3NetworkUuids and vmNicInventories mustn't both be empty or both be set"));
    }
    let items: Vec<serde_json::Map<String, Value>> =
        serde_json::from_str(text).map_err(|e| Error::operr(format!("invalid json format, causes: {e}")))?;
    let l3_of = |m: &serde_json::Map<String, Value>| m.get("l3NetworkUuid").and_then(Value::as_str).map(str::to_string);
    let mut distinct: Vec<Option<String>> = Vec::new();
    for m in &items {
        let l3 = l3_of(m);
        if !distinct.contains(&l3) {
            distinct.push(l3);
        }
    }
    if distinct.len() != items.len() {
        return Err(Error::argerr("duplicate nic params"));
    }
    let text_of = |m: &serde_json::Map<String, Value>, k: &str| -> Result<Option<String>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(Error::argerr(format!("invalid json format, causes: vmNicParams.{k} is not a string: {other}")))
            }
        }
    };
    let num_of = |m: &serde_json::Map<String, Value>, k: &str| -> Result<Option<i64>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())).map(Some).ok_or_else(|| {
                    Error::argerr(format!("invalid json format, causes: vmNicParams.{k} is not a number: {v}"))
                })
            }
        }
    };
    let java_list = format!("[{}]", l3s.join(", "));
    let mut out = Vec::new();
    for m in &items {
        let l3 = l3_of(m).filter(|s| !s.is_empty());
        let Some(l3) = l3 else {
            return Err(Error::argerr("l3NetworkUuid of vm nic can not be null"));
        };
        if !l3s.contains(&l3) {
            return Err(Error::argerr(format!("l3NetworkUuid of vm nic is not in l3{java_list}")));
        }
        if let Some(b) = num_of(m, "outboundBandwidth")? {
            if !(NIC_QOS_MIN..=NIC_QOS_MAX).contains(&b) {
                return Err(Error::argerr(format!("outbound bandwidth[{b}] of vm nic is out of [8192, 32212254720]")));
            }
        }
        if let Some(b) = num_of(m, "inboundBandwidth")? {
            if !(NIC_QOS_MIN..=NIC_QOS_MAX).contains(&b) {
                return Err(Error::argerr(format!("inbound bandwidth[{b}] of vm nic is out of [8192, 32212254720]")));
            }
        }
        if let Some(q) = num_of(m, "multiQueueNum")? {
            if !(1..=256).contains(&q) {
                return Err(Error::argerr(format!("multi queue num[{q}] of vm nic is out of [1,256]")));
            }
        }
        let state = text_of(m, "state")?;
        if let Some(st) = &state {
            if st != "enable" && st != "disable" {
                return Err(Error::argerr(format!("vm nic of l3[uuid:{l3}] state[{st}] is not enable or disable ")));
            }
        }
        let driver = text_of(m, "driverType")?.filter(|d| !d.is_empty());
        if let Some(d) = &driver {
            if !NIC_DRIVERS.contains(&d.as_str()) {
                return Err(Error::argerr(format!("vm nic driver {d} not support yet")));
            }
        }
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "l3NetworkUuid" | "ip" | "mac" | "netmask" | "gateway" | "metaData" | "driverType" | "state" => {}
                "ip6" | "prefix6" | "gateway6" | "outboundBandwidth" | "inboundBandwidth" | "multiQueueNum"
                | "sgUuids" | "VmNicType" | "isDefaultNic" => {
                    return Err(Error::argerr(format!(
                        "vmNicParams field[{k}] is not supported by this management node yet"
                    )))
                }
                _ => return Err(Error::argerr(format!("vmNicParams field[{k}] is not a field of VmNicParam"))),
            }
        }
        out.push(NicParam {
            l3,
            ip: text_of(m, "ip")?.filter(|s| !s.is_empty()),
            mac: text_of(m, "mac")?.filter(|s| !s.is_empty()),
            netmask: text_of(m, "netmask")?.filter(|s| !s.is_empty()),
            gateway: text_of(m, "gateway")?.filter(|s| !s.is_empty()),
            meta_data: text_of(m, "metaData")?,
            driver,
            state,
        });
    }
    Ok(out)
}

/// `devices` (upstream `VmDevicesSpec`): only a TPM.
#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Devices {
    pub(super) tpm: Option<TpmReq>,
}

/// `devices.tpm` (upstream `TpmSpec`, the fields a client may set; `enable` defaults to true).
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TpmReq {
    #[serde(default = "yes")]
    pub(super) enable: bool,
    pub(super) key_provider_uuid: Option<String>,
    #[serde(default)]
    pub(super) resource_key_created_new: bool,
}

pub(super) fn yes() -> bool {
    true
}

/// The TPM a VM gets (recorded with the VM record).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TpmPlan {
    pub(super) uuid: String,
    pub(super) key_provider_uuid: Option<String>,
    pub(super) resource_key_created_new: bool,
}

/// What a VM made from a volume snapshot takes from it: the size of the snapshotted volume,
/// and platform / OS / architecture / image from that volume's VM or image.
#[derive(Clone, Default)]
pub(super) struct SnapSrc {
    pub(super) uuid: String,
    pub(super) size: i64,
    pub(super) actual_size: i64,
    pub(super) format: Option<String>,
    pub(super) image: Option<String>,
    pub(super) platform: Option<String>,
    pub(super) guest_os_type: Option<String>,
    pub(super) architecture: Option<String>,
    pub(super) virtio: bool,
}

/// A list of sizes: numbers, or the strings list validation turns them into.
pub(super) fn sizes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
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
/// (`tagUuids` is honoured by the pipeline for every create API: resources/tag.rs.)
pub(super) const NOT_YET: &[&str] = &[];

/// The system tags CreateVmInstance accepts (upstream `VmSystemTags`), as the API table's patterns.
pub(super) const VM_TAGS: &[&str] = &[
    "staticIp::{l3NetworkUuid}::{ip}",
    "ipv4Netmask::{l3NetworkUuid}::{netmask}",
    "ipv4Gateway::{l3NetworkUuid}::{gateway}",
    "customMac::{l3NetworkUuid}::{mac}",
    "primaryStorageUuidForDataVolume::{uuid}",
    "userdata::{userdata}",
    "hostname::{hostname}",
    "sshkey::{sshkey}",
    "rootPassword::{rootPassword}",
    "createWithoutCdRom::{createWithoutCdRom}",
    "consolePassword::{consolePassword}",
    "bootOrder::{bootOrder}",
];

/// VM system tags kept on the VM as they are (upstream `VmSystemTags`): the guest's hostname
/// (checked by [`check_hostname`]), an SSH public key and a root password for the guest's
/// cloud-init, and `createWithoutCdRom::true` (no empty CD-ROM drive, create-cdrom step).
const KEPT_AS_IS: &[&str] = &[
    "userdata::",
    "hostname::",
    "sshkey::",
    "rootPassword::",
    "createWithoutCdRom::",
    // the VNC password and the boot order a KVM VM starts with (kvm.rs `console_and_boot`)
    "consolePassword::",
    "bootOrder::",
];

/// The VM system tags of a create message, by kind, as (l3 uuid, value).
#[derive(Default)]
pub(super) struct VmTags {
    pub(super) ips: Vec<(String, String)>,
    pub(super) netmasks: Vec<(String, String)>,
    pub(super) gateways: Vec<(String, String)>,
    pub(super) macs: Vec<(String, String)>,
    /// the tags the VM keeps (upstream deletes customMac once the NIC has it)
    pub(super) kept: Vec<String>,
}

impl VmTags {
    pub(super) fn parse(tags: &[String]) -> VmTags {
        let mut out = VmTags::default();
        for t in tags {
            if KEPT_AS_IS.iter().any(|p| t.starts_with(p)) {
                out.kept.push(t.clone());
                continue;
            }
            let parts: Vec<&str> = t.splitn(3, "::").collect();
            let [kind, l3, value] = parts[..] else { continue };
            let pair = (l3.to_string(), value.to_string());
            match kind {
                "staticIp" => out.ips.push(pair),
                "ipv4Netmask" => out.netmasks.push(pair),
                "ipv4Gateway" => out.gateways.push(pair),
                "customMac" => {
                    out.macs.push(pair);
                    continue;
                }
                _ => continue,
            }
            out.kept.push(t.clone());
        }
        out
    }
}

/// The `userdata::` tags of a create (upstream VmInstanceManagerImpl `installUserdataValidator`,
/// create-message side): at most one (SYS.1007), and its value must pass Java's basic Base64
/// decoder; upstream lets the decoder's IllegalArgumentException escape the interceptor, so the
/// API answers SYS.1000 with the exception's message as details.
pub(super) fn check_userdata(tags: &[String]) -> Result<()> {
    let mut seen = false;
    for t in tags {
        let Some(value) = t.strip_prefix("userdata::") else { continue };
        if seen {
            return Err(Error::argerr("Shouldn't be more than one userdata systemTag for one vm."));
        }
        seen = true;
        if let Some(why) = java_base64_error(value) {
            return Err(Error::code(rzstack_api::codes::SYS_1000, why));
        }
    }
    Ok(())
}

/// The boot devices upstream knows (`VmBootDevice`).
pub(super) const BOOT_DEVICES: &[&str] = &["HardDisk", "CdRom", "Network"];

/// The `bootOrder::` tags of a create: an admin-only tag upstream (`@AdminOnlyTag`: SYS.1006
/// for another account); each comma-separated device must be one of [`BOOT_DEVICES`]
/// (SYS.1007, the text of upstream's boot-order tag validator; upstream's KVM host would
/// otherwise fail the start on an unknown device).
pub(super) fn check_boot_order_tags(tags: &[String], account: &str) -> Result<()> {
    for t in tags {
        let Some(order) = t.strip_prefix("bootOrder::") else { continue };
        if account != crate::identity::ADMIN_UUID {
            return Err(Error::operr(format!("tag[{t}] is only for admin")));
        }
        if let Some(bad) = order.split(',').find(|o| !BOOT_DEVICES.contains(o)) {
            return Err(Error::argerr(format!("invalid boot device[{bad}] in boot order[{order}]")));
        }
    }
    Ok(())
}

/// The `hostname::` tags of a create (upstream VmInstanceManagerImpl `installHostnameValidator`,
/// create-message side): at most one, and a valid domain name as Apache commons
/// `DomainValidator.getInstance(true)` sees it (both SYS.1007).
pub(super) fn check_hostname(tags: &[String]) -> Result<()> {
    let mut count = 0;
    for t in tags {
        let Some(name) = t.strip_prefix("hostname::") else { continue };
        count += 1;
        if count > 1 {
            return Err(Error::argerr(format!("only one hostname system tag is allowed, but {count} got")));
        }
        if !valid_domain(name) {
            return Err(Error::argerr(format!(
                "hostname[{name}] specified in system tag[{t}] is not a valid domain name"
            )));
        }
    }
    Ok(())
}

/// A domain name as DomainValidator (local names allowed) accepts it: at most 253 characters;
/// labels of letters, digits and inner hyphens, 1 to 63 long; one label alone (a local host
/// name), or several ending with an alphabetic top-level label (DomainValidator checks it
/// against the IANA list; here any alphabetic label of 2+ letters passes). A final dot is allowed.
pub(super) fn valid_domain(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.strip_suffix('.').unwrap_or(name).split('.').collect();
    match labels.as_slice() {
        [one] => label_ok(one) && !name.ends_with('.'),
        [init @ .., tld] => {
            init.iter().all(|l| label_ok(l))
                && label_ok(tld)
                && tld.len() >= 2
                && tld.chars().all(|c| c.is_ascii_alphabetic())
        }
        [] => false,
    }
}

/// Why `java.util.Base64.getDecoder().decode(s.getBytes())` refuses `s` (the decoder's
/// messages, same checks in the same order: RFC 4648 alphabet, padding optional but exact when
/// present, nothing after it), or None when it decodes.
pub(super) fn java_base64_error(s: &str) -> Option<String> {
    let src = s.as_bytes();
    let n = src.len();
    if n == 0 {
        return None;
    }
    if n < 2 {
        return Some("Input byte[] should at least have 2 bytes for base64 bytes".into());
    }
    let (mut i, mut shift) = (0usize, 18i32);
    while i < n {
        let c = src[i];
        i += 1;
        if c == b'=' {
            // "=" where a unit starts, or "xx=" not followed by a second "="
            let bad_pair = shift == 6
                && (i == n || {
                    i += 1;
                    src[i - 1] != b'='
                });
            if bad_pair || shift == 18 {
                return Some("Input byte array has wrong 4-byte ending unit".into());
            }
            break;
        }
        if !(c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
            // Java prints the (signed) byte in hex
            let v = i32::from(c as i8);
            let hex = if v < 0 { format!("-{:x}", -v) } else { format!("{v:x}") };
            return Some(format!("Illegal base64 character {hex}"));
        }
        shift -= 6;
        if shift < 0 {
            shift = 18;
        }
    }
    if shift == 12 {
        return Some("Last unit does not have enough valid bits".into());
    }
    if i < n {
        return Some(format!("Input byte array has incorrect ending byte at {i}"));
    }
    None
}

/// The host whose disk holds a volume's files when its primary storage is LocalStorage: its
/// `local_storage_resource_ref` row (upstream LocalStorageResourceRefVO.hostUuid), kept after
/// its VM is expunged; for a volume recorded before refs existed, the host of the VM it belongs
/// or last belonged to (current, else last host). None for other storage types, and for a
/// volume no VM ever used (its file is made where the VM lands).
pub(super) async fn local_host_of_volume(app: &App, volume: &str) -> Result<Option<String>> {
    let row = one_row(
        app,
        "SELECT COALESCE(r.host_uuid, m.host_uuid, m.last_host_uuid) FROM volume v \
         JOIN primary_storage p ON p.uuid = v.primary_storage_uuid \
         LEFT JOIN local_storage_resource_ref r ON r.resource_uuid = v.uuid \
         LEFT JOIN vm_instance m ON m.uuid = COALESCE(v.vm_instance_uuid, v.last_vm_instance_uuid) \
         WHERE v.uuid = $1 AND p.type = 'LocalStorage'",
        volume,
    )
    .await?;
    Ok(match row {
        Some(r) => opt_str(&r, 0)?,
        None => None,
    })
}

/// [`local_host_of_volume`] for a volume snapshot on LocalStorage: its own ref, else its
/// volume's, else the host of its volume's VM.
pub(super) async fn local_host_of_snapshot(app: &App, snapshot: &str) -> Result<Option<String>> {
    let row = one_row(
        app,
        "SELECT COALESCE(rs.host_uuid, rv.host_uuid, m.host_uuid, m.last_host_uuid) FROM volume_snapshot s \
         JOIN primary_storage p ON p.uuid = s.primary_storage_uuid \
         LEFT JOIN local_storage_resource_ref rs ON rs.resource_uuid = s.uuid \
         LEFT JOIN volume v ON v.uuid = s.volume_uuid \
         LEFT JOIN local_storage_resource_ref rv ON rv.resource_uuid = v.uuid \
         LEFT JOIN vm_instance m ON m.uuid = COALESCE(v.vm_instance_uuid, v.last_vm_instance_uuid) \
         WHERE s.uuid = $1 AND p.type = 'LocalStorage'",
        snapshot,
    )
    .await?;
    Ok(match row {
        Some(r) => opt_str(&r, 0)?,
        None => None,
    })
}

/// The host a new VM must run on because LocalStorage files it uses are on that host's disk:
/// that of the snapshot or existing volume its root volume comes from, else that of its
/// existing data volumes (upstream: a VM with a LocalStorageResourceRefVO volume is only placed
/// on that host, LocalStorageAllocatorFactory; existing data volumes are attached after the VM
/// is made, and LocalStorageFactory.preAttachVolume refuses one on another host than the root
/// volume's). A data volume on another host than the root volume's (its source's, else the
/// designated host's, else the first data volume's) is refused with upstream's attach error.
async fn local_host_of_sources(
    app: &App,
    req: &CreateVm,
    root_volume: &str,
    vm: &str,
    data: &[DataVol],
) -> Result<Option<String>> {
    let source_host = match &req.snapshot {
        Some(s) => local_host_of_snapshot(app, &s.uuid).await?,
        None if req.disk_aos.iter().any(|d| d.boot && d.source_uuid.as_deref() == Some(root_volume)) => {
            local_host_of_volume(app, root_volume).await?
        }
        None => None,
    };
    let mut root_host = source_host.clone().or_else(|| req.host_uuid.clone());
    let mut forced = source_host;
    for d in data.iter().filter(|d| d.adopt) {
        let Some(h) = local_host_of_volume(app, &d.uuid).await? else { continue };
        match &root_host {
            Some(r) if *r != h => {
                return Err(Error::operr(format!(
                    "cannot attach the data volume[uuid:{d}] to the vm[uuid:{vm}]. Both vm's root volume and the data \
                     volume are on local primary storage, but they are on different hosts. The root volume[uuid:{root_volume}] \
                     is on the host[uuid:{r}] but the data volume[uuid: {d}] is on the host[uuid: {h}]",
                    d = d.uuid
                )))
            }
            Some(_) => {}
            None => root_host = Some(h.clone()),
        }
        forced = forced.or(Some(h));
    }
    Ok(forced)
}

/// Why `ip` cannot be taken on `l3` (upstream CheckIpAvailability reasons), or None.
pub(super) async fn ip_unavailable(app: &App, l3: &str, ip: &str, n: i64) -> Result<Option<&'static str>> {
    let ranges = app
        .db
        .fetch_all(
            "SELECT start_ip_long, end_ip_long, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4",
            &[Val::from(l3)],
        )
        .await?;
    let mut in_range = ranges.is_empty();
    for r in &ranges {
        let gw: Option<String> = r.try_get(2)?;
        if gw.as_deref() == Some(ip) {
            return Ok(Some("it is gateway"));
        }
        if r.try_get::<i64, _>(0)? <= n && n <= r.try_get::<i64, _>(1)? {
            in_range = true;
            break;
        }
    }
    if !in_range {
        return Ok(Some("it is not in this range"));
    }
    let used = app
        .db
        .fetch_optional(
            "SELECT 1 FROM used_ip WHERE l3_network_uuid = $1 AND ip_in_long = $2",
            &[Val::from(l3), Val::I(n)],
        )
        .await?;
    Ok(used.map(|_| "it is used"))
}

/// MAC rules of upstream `MacOperator.validateAvailableMac`.
pub(super) fn check_mac(mac: &str) -> Result<()> {
    let m = mac.to_lowercase();
    let ok = m.len() == 17
        && m.split(':').count() == 6
        && m.split(':').all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::operr(format!("Not a valid MAC address [{mac}]")));
    }
    if m == "00:00:00:00:00:00" || m == "ff:ff:ff:ff:ff:ff" {
        return Err(Error::operr("Disallowed address"));
    }
    if u8::from_str_radix(&m[..2], 16).unwrap_or(0) & 1 == 1 {
        return Err(Error::operr(format!("Expected unicast mac address, found multicast MAC address [{mac}]")));
    }
    Ok(())
}

/// staticIp / ipv4Netmask / ipv4Gateway / customMac tags: on one of the VM's L3 networks,
/// the IP in the L3's ranges, not its gateway and free, netmask and gateway as the range's,
/// the MAC a valid unicast one not used by another NIC.
pub(super) async fn check_nic_tags(app: &App, tags: &VmTags, l3s: &[String]) -> Result<()> {
    let all = tags.ips.iter().chain(&tags.netmasks).chain(&tags.gateways).chain(&tags.macs);
    for (l3, _) in all {
        if !l3s.contains(l3) {
            return Err(Error::argerr(format!(
                "the system tags of the vm name l3Network[uuid:{l3}], which is not in l3NetworkUuids[{}]",
                l3s.join(", ")
            )));
        }
    }
    for (l3, ip) in &tags.ips {
        if tags.ips.iter().filter(|(l, _)| l == l3).count() > 1 {
            return Err(Error::argerr(format!("only one staticIp system tag is allowed per l3Network[uuid:{l3}]")));
        }
        let Some(n) = crate::resources::l3::ipv4(ip) else {
            return Err(Error::argerr(format!("the static IP[{ip}] format error")));
        };
        if let Some(why) = ip_unavailable(app, l3, ip, i64::from(n)).await? {
            return Err(Error::argerr(format!(
                "IP[{ip}] is not available on the L3 network[uuid:{l3}] because: {why}"
            )));
        }
        let range = app
            .db
            .fetch_optional(
                "SELECT netmask, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 \
                 AND ip_range_type = 'Normal' ORDER BY create_date LIMIT 1",
                &[Val::from(l3.as_str())],
            )
            .await?;
        let mask = tags.netmasks.iter().find(|(l, _)| l == l3).map(|(_, v)| v.as_str());
        let gw = tags.gateways.iter().find(|(l, _)| l == l3).map(|(_, v)| v.as_str());
        match range {
            None => {
                if mask.is_none() {
                    return Err(Error::operr("netmask must be set"));
                }
            }
            Some(r) => {
                let rmask: String = r.try_get(0)?;
                let rgw: Option<String> = r.try_get(1)?;
                if let Some(m) = mask {
                    if m != rmask {
                        return Err(Error::operr(format!("netmask error, expect: {rmask}, got: {m}")));
                    }
                }
                if let Some(g) = gw {
                    if Some(g) != rgw.as_deref() {
                        return Err(Error::operr(format!(
                            "gateway error, expect: {}, got: {g}",
                            rgw.unwrap_or_else(|| "null".into())
                        )));
                    }
                }
            }
        }
    }
    for (_, mac) in &tags.macs {
        check_mac(mac)?;
        if app
            .db
            .fetch_optional("SELECT 1 FROM vm_nic WHERE mac = $1", &[Val::from(mac.to_lowercase())])
            .await?
            .is_some()
        {
            return Err(Error::argerr(format!("Duplicate mac address [{}]", mac.to_lowercase())));
        }
    }
    Ok(())
}

pub(super) async fn one_row(app: &App, sql: &str, uuid: &str) -> Result<Option<sqlx::any::AnyRow>> {
    app.db.fetch_optional(sql, &[Val::from(uuid)]).await
}

pub(super) fn opt_str(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(i)?)
}

/// The upstream interceptor checks (facts 4.2) for the supported parameters, in order;
/// fills the plan's derived fields.
/// Column offsets in the [`prefetch`] row: the instance offering's (state, type, cpu_num,
/// memory_size, reserved_memory_size, cpu_speed, allocator_strategy, uuid), the first L3's
/// (state, system, zone_uuid, uuid) and the image's (state, status, media_type, system,
/// platform, guest_os_type, architecture, size, actual_size, format, virtio, uuid).
const PRE_OFFERING: usize = 0;
const PRE_L3: usize = 8;
const PRE_IMAGE: usize = 12;

/// The instance offering, first L3 network and image of a create read in ONE statement (the
/// checks below read each of them once; absent rows come back as NULL columns).
async fn prefetch(app: &App, offering: &str, l3: &str, image: &str) -> Result<Option<sqlx::any::AnyRow>> {
    app.db
        .fetch_optional(
            "SELECT o.state, o.type, o.cpu_num, o.memory_size, o.reserved_memory_size, o.cpu_speed, \
             o.allocator_strategy, o.uuid, l.state, l.system, l.zone_uuid, l.uuid, i.state, i.status, i.media_type, \
             i.system, i.platform, i.guest_os_type, i.architecture, i.size, i.actual_size, i.format, i.virtio, i.uuid \
             FROM (SELECT 1 AS one) x LEFT JOIN instance_offering o ON o.uuid = $1 \
             LEFT JOIN l3_network l ON l.uuid = $2 LEFT JOIN image i ON i.uuid = $3",
            &[Val::from(offering), Val::from(l3), Val::from(image)],
        )
        .await
}

/// The prefetched part at `off` (whose uuid column is `uuid_col` past it) when it is that of
/// `uuid`: Some(Some(row)) found, Some(None) not found; None when it was not prefetched.
fn prefetched<'a>(
    pre: &'a Option<sqlx::any::AnyRow>,
    off: usize,
    uuid_col: usize,
    uuid: &str,
    asked: Option<&str>,
) -> Result<Option<Option<&'a sqlx::any::AnyRow>>> {
    let Some(row) = pre else { return Ok(None) };
    if asked != Some(uuid) {
        return Ok(None);
    }
    Ok(Some(row.try_get::<Option<String>, _>(off + uuid_col)?.map(|_| row)))
}

pub(super) async fn check_and_plan(app: &App, msg: &Msg, req: &mut CreateVm) -> Result<Ctx> {
    for f in NOT_YET {
        if !matches!(msg.fields.get(*f), None | Some(Value::Null)) {
            return Err(Error::argerr(format!(
                "parameter[{f}] of {} is not supported by this management node yet",
                msg.api
            )));
        }
    }
    // Only the VM_TAGS patterns pass the pipeline; parse them (checked below, in upstream order).
    let mut tags = VmTags::parse(&msg.system_tags());
    // the usual create (an offering, an image, L3 networks, no disk AOs): its three reads in one
    let pre_keys = match (&req.instance_offering_uuid, req.l3_network_uuids.first(), &req.image_uuid) {
        (Some(o), Some(l), Some(i)) if req.disk_aos.is_empty() && req.snapshot.is_none() => {
            Some((o.clone(), l.clone(), i.clone()))
        }
        _ => None,
    };
    let pre = match &pre_keys {
        Some((o, l, i)) => prefetch(app, o, l, i).await?,
        None => None,
    };
    let pre_offering = pre_keys.as_ref().map(|k| k.0.as_str());
    let pre_l3 = pre_keys.as_ref().map(|k| k.1.as_str());
    let pre_image = pre_keys.as_ref().map(|k| k.2.as_str());
    // 1. instance settings
    let (cpu_num, memory_size, mut reserved, cpu_speed, allocator) = match &req.instance_offering_uuid {
        Some(o) => {
            let owned;
            let (row, k) = match prefetched(&pre, PRE_OFFERING, 7, o, pre_offering)? {
                Some(found) => (found, PRE_OFFERING),
                None => {
                    owned = one_row(
                        app,
                        "SELECT state, type, cpu_num, memory_size, reserved_memory_size, cpu_speed, allocator_strategy \
                         FROM instance_offering WHERE uuid = $1",
                        o,
                    )
                    .await?;
                    (owned.as_ref(), 0)
                }
            };
            let row = row.ok_or_else(|| Error::not_found(format!("instance offering[uuid:{o}] is not found")))?;
            let state: String = row.try_get(k)?;
            let ty: String = row.try_get(k + 1)?;
            if state == "Disabled" {
                return Err(Error::operr(format!("instance offering[uuid:{o}] is Disabled, can't create vm from it")));
            }
            if ty != "UserVm" {
                return Err(Error::operr(format!(
                    "instance offering[uuid:{o}, type:{ty}] is not UserVm type, can't create vm from it"
                )));
            }
            let r: i64 = row.try_get(k + 4)?;
            (
                row.try_get::<i64, _>(k + 2)?,
                row.try_get::<i64, _>(k + 3)?,
                req.reserved_memory_size.or(Some(r)),
                row.try_get::<i64, _>(k + 5)?,
                opt_str(row, k + 6)?,
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
    // 3. the same MAC twice
    let mut seen_macs = std::collections::HashSet::new();
    for (_, mac) in &tags.macs {
        if !seen_macs.insert(mac.to_lowercase()) {
            return Err(Error::operr(format!("Not allowed same mac [{}]", mac.to_lowercase())));
        }
    }
    // 4. vmNicParams: checked, then their IP / netmask / gateway / MAC join the tags' (the same
    // availability and validity checks below), driver type, state and metadata go on the NIC
    let nic_params = match req.vm_nic_params.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(text) => parse_nic_params(text, &req.l3_network_uuids)?,
    };
    for p in &nic_params {
        if let Some(ip) = &p.ip {
            tags.ips.push((p.l3.clone(), ip.clone()));
        }
        if let Some(m) = &p.netmask {
            tags.netmasks.push((p.l3.clone(), m.clone()));
        }
        if let Some(g) = &p.gateway {
            tags.gateways.push((p.l3.clone(), g.clone()));
        }
        if let Some(mac) = &p.mac {
            if !seen_macs.insert(mac.to_lowercase()) {
                return Err(Error::operr(format!("Not allowed same mac [{}]", mac.to_lowercase())));
            }
            tags.macs.push((p.l3.clone(), mac.clone()));
        }
    }
    // 5. L3 networks
    let mut first_l3_zone = None;
    for (i, l3) in req.l3_network_uuids.iter().enumerate() {
        if req.l3_network_uuids[..i].contains(l3) {
            return Err(Error::operr(format!("Can't add same uuid in the l3Network,uuid: {l3}")));
        }
        let owned;
        let (row, k) = match prefetched(&pre, PRE_L3, 3, l3, pre_l3.filter(|_| i == 0))? {
            Some(found) => (found, PRE_L3),
            None => {
                owned = one_row(app, "SELECT state, system, zone_uuid FROM l3_network WHERE uuid = $1", l3).await?;
                (owned.as_ref(), 0)
            }
        };
        let row = row.ok_or_else(|| Error::not_found(format!("l3Network[uuid:{l3}] is not found")))?;
        if row.try_get::<String, _>(k)? == "Disabled" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is Disabled, can not create vm on it")));
        }
        if row.try_get::<i64, _>(k + 1)? != 0 && req.ty.as_deref().unwrap_or("UserVm") == "UserVm" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is system network, can not create user vm on it")));
        }
        if i == 0 {
            first_l3_zone = Some(row.try_get::<String, _>(k + 2)?);
        }
    }
    // static IPs and custom MACs (upstream StaticIpOperator / MacOperator validators)
    check_nic_tags(app, &tags, &req.l3_network_uuids).await?;
    let on_index = req.data_volume_system_tags_on_index.values().flatten();
    for t in req.root_volume_system_tags.iter().chain(&req.data_volume_system_tags).chain(on_index) {
        match t.strip_prefix("volumeProvisioningStrategy::") {
            Some("ThinProvisioning") | Some("ThickProvisioning") => {}
            _ => {
                return Err(Error::argerr(format!(
                    "volume system tag[{t}] is not supported: only volumeProvisioningStrategy::ThinProvisioning and \
                     volumeProvisioningStrategy::ThickProvisioning are accepted in rootVolumeSystemTags/dataVolumeSystemTags"
                )))
            }
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
        // the only L3 is the default when none is named; a named one must be in the list
        if req.l3_network_uuids.len() == 1 && default_l3.is_none() {
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
    // 10. diskAOs: the boot disk sets platform / guestOsType / architecture (and virtio from its
    // `driver::virtio` tag); it may be an existing volume, or name the root's template / size /
    // offering; every disk may name the (one) primary storage
    let mut root_from_volume: Option<String> = None;
    let mut root_name: Option<String> = None;
    let mut boot_tags: Vec<String> = Vec::new();
    if !req.disk_aos.is_empty() {
        let Some(boot) = req.disk_aos.iter().find(|d| d.boot).cloned() else {
            return Err(Error::argerr("missing root disk"));
        };
        req.platform = boot.platform.clone();
        req.guest_os_type = boot.guest_os_type.clone();
        req.architecture = boot.architecture.clone();
        req.virtio = Some(boot.system_tags.iter().any(|t| t == "driver::virtio"));
        for ao in &req.disk_aos {
            if let Some(p) = &ao.primary_storage_uuid {
                if one_row(app, "SELECT 1 FROM primary_storage WHERE uuid = $1", p).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "invalid field[diskAOs.primaryStorageUuid], resource[uuid:{p}, type:PrimaryStorageVO] not found"
                    )));
                }
                match &req.primary_storage_uuid_for_root_volume {
                    Some(q) if q != p => {
                        return Err(Error::argerr(format!(
                        "diskAOs on different primary storages[{q}, {p}] are not supported by this management node yet"
                    )))
                    }
                    _ => req.primary_storage_uuid_for_root_volume = Some(p.clone()),
                }
            }
            for t in &ao.system_tags {
                let ok = matches!(
                    t.strip_prefix("volumeProvisioningStrategy::"),
                    Some("ThinProvisioning" | "ThickProvisioning")
                ) || (ao.boot && t == "driver::virtio");
                if !ok {
                    return Err(Error::argerr(format!(
                        "diskAOs system tag[{t}] is not supported: only volumeProvisioningStrategy::ThinProvisioning, \
                         volumeProvisioningStrategy::ThickProvisioning (and driver::virtio on the boot disk) are accepted"
                    )));
                }
            }
        }
        root_name = boot.name.clone();
        boot_tags = boot.system_tags.iter().filter(|t| *t != "driver::virtio").cloned().collect();
        if boot.source_uuid.is_some() {
            let (v, ps) = source_volume(app, &boot).await?;
            if req.primary_storage_uuid_for_root_volume.as_ref().is_some_and(|p| *p != ps) {
                return Err(Error::argerr(format!(
                    "the boot disk volume[uuid:{v}] is on primary storage[uuid:{ps}], not on the one asked for"
                )));
            }
            req.primary_storage_uuid_for_root_volume = Some(ps);
            root_from_volume = Some(v);
        } else {
            let conflict = |what: &str| Error::argerr(format!("the boot disk's {what} conflicts with the message's"));
            if let Some(t) = &boot.template_uuid {
                if req.image_uuid.as_ref().is_some_and(|i| i != t) {
                    return Err(conflict("templateUuid"));
                }
                req.image_uuid = Some(t.clone());
            }
            if boot.size > 0 {
                if req.root_disk_size.is_some_and(|s| s != boot.size) {
                    return Err(conflict("size"));
                }
                req.root_disk_size = Some(boot.size);
            }
            if let Some(o) = &boot.disk_offering_uuid {
                if req.root_disk_offering_uuid.as_ref().is_some_and(|x| x != o) {
                    return Err(conflict("diskOfferingUuid"));
                }
                req.root_disk_offering_uuid = Some(o.clone());
            }
        }
    }
    // 11. image
    let mut platform = req.platform.clone();
    let mut guest_os = req.guest_os_type.clone();
    let mut arch = req.architecture.clone();
    let mut image_size = 0i64;
    let mut image_actual = 0i64;
    let mut iso = false;
    let mut format = None;
    let mut image_virtio = false;
    if let Some(src) = &req.snapshot {
        // a copy of the snapshot: no image to check; what the image would give comes from the
        // snapshotted volume's VM (or image)
        platform = platform.or(src.platform.clone());
        guest_os = guest_os.or(src.guest_os_type.clone());
        arch = arch.or(src.architecture.clone());
        if platform.is_none() {
            return Err(Error::operr(format!(
                "platform is not set, neither in the message nor on the source of volume snapshot[uuid:{}]",
                src.uuid
            )));
        }
        image_size = src.size;
        image_actual = src.actual_size;
        format = src.format.clone();
        image_virtio = src.virtio;
    } else {
        match &req.image_uuid {
            None => {
                if platform.is_none()
                    || guest_os.is_none()
                    || arch.is_none()
                    || (req.root_disk_offering_uuid.is_none()
                        && req.root_disk_size.is_none()
                        && root_from_volume.is_none())
                {
                    return Err(Error::argerr(
                    "when imageUuid is null, [platform] is required, [guestOsType] is required, [architecture] is required, \
                     rootDiskOfferingUuid or rootDiskSize cannot be all null",
                ));
                }
            }
            Some(i) => {
                let owned;
                let (row, k) = match prefetched(&pre, PRE_IMAGE, 11, i, pre_image)? {
                    Some(found) => (found, PRE_IMAGE),
                    None => {
                        owned = one_row(
                            app,
                            "SELECT state, status, media_type, system, platform, guest_os_type, architecture, size, \
                             actual_size, format, virtio FROM image WHERE uuid = $1",
                            i,
                        )
                        .await?;
                        (owned.as_ref(), 0)
                    }
                };
                let row = row.ok_or_else(|| Error::not_found(format!("image[uuid:{i}] is not found")))?;
                let state: String = row.try_get(k)?;
                let status: String = row.try_get(k + 1)?;
                let media: String = row.try_get(k + 2)?;
                let system: i64 = row.try_get(k + 3)?;
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
                    return Err(Error::argerr(format!(
                        "image[uuid:{i}] is system image, can't be used to create user vm"
                    )));
                }
                platform = platform.or(opt_str(row, k + 4)?);
                guest_os = guest_os.or(opt_str(row, k + 5)?);
                arch = arch.or(opt_str(row, k + 6)?);
                if platform.is_none() {
                    return Err(Error::operr("platform is not set, neither in the message nor on the image"));
                }
                image_size = row.try_get::<Option<i64>, _>(k + 7)?.unwrap_or(0);
                image_actual = row.try_get::<Option<i64>, _>(k + 8)?.unwrap_or(0);
                iso = media == "ISO";
                format = Some(row.try_get::<String, _>(k + 9)?);
                image_virtio = row.try_get::<i64, _>(k + 10)? != 0;
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

    // The plan: sizes and every id, fixed now. A root disk offering (or rootDiskSize, which
    // upstream turns into a temporary offering) sizes the root volume; a volume made from an
    // image is never smaller than the image.
    if req.root_disk_offering_uuid.is_none() && req.root_disk_size.is_some_and(|s| s <= 0) {
        return Err(Error::operr("Unexpected root disk settings"));
    }
    let asked = match (&req.root_disk_offering_uuid, req.root_disk_size) {
        (Some(o), _) => offering_size.get(o).copied(),
        (None, Some(s)) => Some(s),
        _ => None,
    };
    let root_size = if root_from_volume.is_some() {
        0
    } else if req.snapshot.is_some() {
        image_size
    } else if req.image_uuid.is_none() || iso {
        asked.unwrap_or(0)
    } else {
        asked.map_or(image_size, |a| a.max(image_size))
    };
    if hypervisors.is_empty() {
        hypervisors = match format.as_deref() {
            // qcow2/raw/vmdk images run on KVM; simulator hosts accept them too.
            Some("qcow2") | Some("raw") | Some("vmdk") => vec!["KVM".into(), "Simulator".into()],
            _ => vec!["KVM".into(), "Simulator".into()],
        };
    }
    // data volumes in upstream's order: disk offerings, then dataDiskSizes (upstream merges the
    // temporary offerings it makes of them after the given ones), then data volume templates
    let mut data_volumes: Vec<DataVol> = Vec::new();
    for o in &req.data_disk_offering_uuids {
        data_volumes.push(DataVol {
            uuid: new_uuid(),
            size: offering_size.get(o).copied().unwrap_or(0),
            offering: Some(o.clone()),
            ..DataVol::default()
        });
    }
    for sz in &req.data_disk_sizes {
        data_volumes.push(DataVol { uuid: new_uuid(), size: *sz, ..DataVol::default() });
    }
    // dataVolumeSystemTagsOnIndex: extra system tags for the n-th (from 0) of those data
    // volumes; as upstream (VmAllocateVolumeFlow looks up each volume's index), a key that
    // names no data volume is ignored
    for (i, vol) in data_volumes.iter_mut().enumerate() {
        if let Some(vtags) = req.data_volume_system_tags_on_index.get(&i.to_string()) {
            vol.tags.extend(vtags.iter().cloned());
        }
    }
    // data volumes from DataVolumeTemplate images, sized as the image
    for (i, img) in req.data_volume_template_uuids.iter().enumerate() {
        if req.data_volume_template_uuids[..i].contains(img) {
            return Err(Error::argerr(format!(
                "duplicate data volume template[uuid:{img}] in dataVolumeTemplateUuids"
            )));
        }
        let row = one_row(app, "SELECT state, status, media_type, size, actual_size FROM image WHERE uuid = $1", img)
            .await?
            .ok_or_else(|| Error::not_found(format!("image[uuid:{img}] is not found")))?;
        let state: String = row.try_get(0)?;
        let status: String = row.try_get(1)?;
        let media: String = row.try_get(2)?;
        if media != "DataVolumeTemplate" {
            return Err(Error::argerr(format!(
                "image[uuid:{img}] is of mediaType: {media}, only DataVolumeTemplate can be used in dataVolumeTemplateUuids"
            )));
        }
        if state == "Disabled" {
            return Err(Error::operr(format!("image[uuid:{img}] is Disabled, can't create vm from it")));
        }
        if status != "Ready" {
            return Err(Error::operr(format!("image[uuid:{img}] is not ready yet, can't create vm from it")));
        }
        data_volumes.push(DataVol {
            uuid: new_uuid(),
            size: row.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
            actual: row.try_get::<Option<i64>, _>(4)?.unwrap_or(0),
            image: Some(img.clone()),
            ..DataVol::default()
        });
    }
    // 14. primaryStorageUuidForDataVolume
    let data_ps = data_volume_ps(app, msg, req, &mut data_volumes).await?;
    // 15. non-boot diskAOs: exactly one of size / templateUuid / diskOfferingUuid / sourceUuid
    let keys = java_hash_set_order(&["size", "templateUuid", "diskOfferingUuid", "sourceUuid"]);
    for ao in req.disk_aos.iter().filter(|d| !d.boot) {
        let set: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| match *k {
                "size" => ao.size > 0,
                "templateUuid" => ao.template_uuid.is_some(),
                "diskOfferingUuid" => ao.disk_offering_uuid.is_some(),
                _ => ao.source_uuid.is_some(),
            })
            .collect();
        if set.len() > 1 {
            let mut list = String::new();
            for k in &set {
                list += &format!("{k}, ");
            }
            return Err(Error::operr(format!("Cannot set the following properties at the same time: {list}")));
        }
        if set.is_empty() {
            return Err(Error::operr(format!(
                "Need to set one of the following properties, and can only be one of them: {}",
                keys.join(", ")
            )));
        }
    }
    for ao in req.disk_aos.iter().filter(|d| !d.boot) {
        let mut d =
            DataVol { uuid: new_uuid(), name: ao.name.clone(), tags: ao.system_tags.clone(), ..DataVol::default() };
        if ao.size > 0 {
            d.size = ao.size;
        } else if let Some(o) = &ao.disk_offering_uuid {
            let row = one_row(app, "SELECT state, disk_size FROM disk_offering WHERE uuid = $1", o).await?.ok_or_else(
                || {
                    Error::not_found(format!(
                        "invalid field[diskAOs.diskOfferingUuid], resource[uuid:{o}, type:DiskOfferingVO] not found"
                    ))
                },
            )?;
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "disk offerings[uuids:[{o}]] are Disabled, can not create vm from it"
                )));
            }
            d.size = row.try_get(1)?;
            d.offering = Some(o.clone());
        } else if let Some(img) = &ao.template_uuid {
            let row =
                one_row(app, "SELECT state, status, media_type, size, actual_size FROM image WHERE uuid = $1", img)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "invalid field[diskAOs.templateUuid], resource[uuid:{img}, type:ImageVO] not found"
                        ))
                    })?;
            let media: String = row.try_get(2)?;
            if media != "DataVolumeTemplate" {
                return Err(Error::argerr(format!(
                    "image[uuid:{img}] is of mediaType: {media}, only DataVolumeTemplate can be used as a diskAOs templateUuid"
                )));
            }
            if row.try_get::<String, _>(0)? == "Disabled" || row.try_get::<String, _>(1)? != "Ready" {
                return Err(Error::operr(format!(
                    "image[uuid:{img}] is Disabled or not ready yet, can't create vm from it"
                )));
            }
            d.size = row.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
            d.actual = row.try_get::<Option<i64>, _>(4)?.unwrap_or(0);
            d.image = Some(img.clone());
        } else {
            let (v, ps) = source_volume(app, ao).await?;
            if req.primary_storage_uuid_for_root_volume.as_ref().is_some_and(|p| *p != ps) {
                return Err(Error::argerr(format!(
                    "the disk volume[uuid:{v}] is on primary storage[uuid:{ps}], not on the one the other disks use"
                )));
            }
            if data_volumes.iter().any(|x| x.uuid == v) || root_from_volume.as_ref() == Some(&v) {
                return Err(Error::argerr(format!("duplicated diskAOs.sourceUuid: {v}")));
            }
            req.primary_storage_uuid_for_root_volume = Some(ps);
            d.uuid = v;
            d.adopt = true;
            d.tags.clear();
        }
        data_volumes.push(d);
    }
    // system-tag validators (upstream TagManager, after the interceptor's checks)
    check_hostname(&msg.system_tags())?;
    check_userdata(&msg.system_tags())?;
    check_boot_order_tags(&msg.system_tags(), msg.account_uuid())?;
    // LocalStorage: the VM runs where the files of its existing disks are
    let root_volume_uuid = root_from_volume.clone().unwrap_or_else(new_uuid);
    let local_host = local_host_of_sources(app, req, &root_volume_uuid, &msg.resource_uuid(), &data_volumes).await?;
    // the VM keeps its instance offering's strategy, or none without an offering (upstream
    // NewVmInstanceMsgBuilder); a designated host or cluster only designates this allocation
    // (and a start without a strategy uses LeastVmPreferred, as upstream)
    let allocator = allocator.unwrap_or_default();
    let strategy = req.strategy.clone().unwrap_or_else(|| "InstantStart".into());
    // virtio (upstream NewVmInstanceMsgBuilder): the message's, else the image's; a virtio VM
    // carries the `driver::virtio` system tag. NICs use the paravirtual driver (virtio) when the
    // image supports it, the platform is paravirtual (Linux, WindowsVirtio, Paravirtualization)
    // or the VM is virtio; else e1000 (upstream VmNicManagerImpl.setNicDriverType).
    let virtio = req.virtio.unwrap_or(image_virtio);
    let mut system_tags = tags.kept;
    // upstream keeps the tag on the VM
    system_tags.extend(data_ps.as_ref().map(|(_, t)| t.clone()));
    if virtio {
        system_tags.push("driver::virtio".to_string());
    }
    let pv_platform = matches!(platform.as_deref(), Some("Linux" | "WindowsVirtio" | "Paravirtualization"));
    let nic_driver = if image_virtio || pv_platform || virtio { "virtio" } else { "e1000" };
    Ok(Ctx {
        vm_uuid: msg.resource_uuid(),
        name: req.name.clone(),
        description: req.description.clone(),
        account_uuid: msg.account_uuid().to_string(),
        zone_uuid: zone,
        cluster_uuid: cluster,
        designated_host: req.host_uuid.clone(),
        image_uuid: req.image_uuid.clone().or_else(|| req.snapshot.as_ref().and_then(|s| s.image.clone())),
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
        root_volume_uuid,
        local_host,
        local_refs: Vec::new(),
        ps_type: None,
        root_from_volume: root_from_volume.is_some(),
        root_name,
        root_size,
        root_actual_size: image_actual,
        root_disk_offering: req.root_disk_offering_uuid.clone(),
        data_volumes,
        cdrom_uuid: new_uuid(),
        default_l3,
        nics: req
            .l3_network_uuids
            .iter()
            .map(|l3| {
                let p = nic_params.iter().find(|p| &p.l3 == l3).cloned().unwrap_or_default();
                Nic {
                    uuid: new_uuid(),
                    l3: l3.clone(),
                    ip: tags.ips.iter().find(|(l, _)| l == l3).map(|(_, ip)| ip.clone()),
                    mac: tags.macs.iter().find(|(l, _)| l == l3).map(|(_, m)| m.to_lowercase()),
                    driver: p.driver,
                    state: p.state,
                    meta_data: p.meta_data,
                }
            })
            .collect(),
        user_tags: msg.user_tags(),
        system_tags,
        nic_driver: Some(nic_driver.to_string()),
        tpm: req.devices.as_ref().and_then(|d| d.tpm.as_ref()).filter(|t| t.enable).map(|t| TpmPlan {
            uuid: new_uuid(),
            key_provider_uuid: t.key_provider_uuid.clone(),
            resource_key_created_new: t.resource_key_created_new,
        }),
        from_snapshot: req.snapshot.as_ref().map(|s| s.uuid.clone()),
        root_volume_tags: req.root_volume_system_tags.iter().chain(&boot_tags).cloned().collect(),
        data_volume_tags: req.data_volume_system_tags.clone(),
        ssh_key_pairs: req.ssh_key_pair_uuids.clone(),
        host: None,
        ps: None,
        request: None,
        on_host: None,
        internal_id: None,
        host_hypervisor: None,
        ps_url: None,
        data_ps: data_ps.map(|(p, _)| p),
        data_ps_url: None,
        data_ps_type: None,
        data_ps_held: 0,
    })
}

/// The `primaryStorageUuidForDataVolume::{uuid}` tag of a create (upstream
/// VmInstanceApiInterceptor `validatePsWhetherSameCluster`, VmInstanceUtils): with
/// primaryStorageUuidForRootVolume both storages must be attached to one cluster (SYS.1006);
/// the storage then takes the data volumes of dataDiskOfferingUuids and dataDiskSizes (the first
/// ones of `data_volumes`), and only those. Anything else about the storage (missing, not
/// attached, disabled, full) fails the allocation, as upstream. Returns (uuid, tag).
pub(super) async fn data_volume_ps(
    app: &App,
    msg: &Msg,
    req: &CreateVm,
    data_volumes: &mut [DataVol],
) -> Result<Option<(String, String)>> {
    const PREFIX: &str = "primaryStorageUuidForDataVolume::";
    let Some(tag) = msg.system_tags().into_iter().find(|t| t.starts_with(PREFIX)) else { return Ok(None) };
    let ps = tag[PREFIX.len()..].to_string();
    if let Some(root) = &req.primary_storage_uuid_for_root_volume {
        let shared = app
            .db
            .fetch_optional(
                "SELECT 1 FROM primary_storage_cluster_ref a JOIN primary_storage_cluster_ref b \
                 ON b.cluster_uuid = a.cluster_uuid WHERE a.primary_storage_uuid = $1 AND b.primary_storage_uuid = $2",
                &[Val::from(root.as_str()), Val::from(ps.as_str())],
            )
            .await?;
        if shared.is_none() {
            return Err(Error::operr(format!(
                "the primary storage[{root}] of the root volume and the primary storage[{ps}] of the data volume are not \
                 in the same cluster"
            )));
        }
    }
    let n = req.data_disk_offering_uuids.len() + req.data_disk_sizes.len();
    for d in data_volumes.iter_mut().take(n) {
        d.on_data_ps = true;
    }
    Ok(Some((ps, tag)))
}
