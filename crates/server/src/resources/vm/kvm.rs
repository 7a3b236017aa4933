//! A VM on a KVM host: the create saga's instantiate step through the host agent
//! (image cache → volumes → bridges, taps and DHCP → QEMU) and its undo (destroy → release the
//! network → delete the volumes); stop / destroy of running KVM VMs.

use super::{Ctx, HOST_1005};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::hostagent::{
    AgentError, DhcpLease, HostAgent, ImageCacheCmd, KvmAgentClient, NetworkPrepareCmd, NetworkReleaseCmd,
    Provisioning, StopMode, VmDestroyCmd, VmStartCmd, VmStopCmd, VolumeCreateCmd, VolumeDeleteCmd, VolumeSnapshotCmd,
    PROTOCOL_VERSION,
};
use rzstack_api::agent::{BridgeSpec, DhcpRelease, DhcpSpec, TapSpec, VmDisk, VmNicSpec};
use rzstack_api::ErrorCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One volume of the VM.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Vol {
    pub uuid: String,
    pub path: String,
    pub root: bool,
    pub size: i64,
    pub device: i64,
    /// An existing volume attached as it is (diskAOs sourceUuid): its file is never deleted here.
    #[serde(default)]
    pub existing: bool,
    /// An existing volume that had no file yet: a blank one is made (and kept, like the volume).
    #[serde(default)]
    pub new_file: bool,
    /// The snapshot file the (root) volume is a copy of (CreateVmInstanceFromVolumeSnapshot).
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// `volumeProvisioningStrategy::ThickProvisioning` on the volume: fully allocated.
    #[serde(default)]
    pub thick: bool,
    /// A data volume made from a DataVolumeTemplate image: (image uuid, file on the backup
    /// storage, format); the volume's content is the image's.
    #[serde(default)]
    pub template: Option<(String, String, String)>,
}

/// One NIC of the VM with its network.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NicPlan {
    pub mac: String,
    pub ip: Option<String>,
    pub device: i64,
    pub tap: String,
    pub l3: String,
    pub l2: String,
    pub interface: String,
    pub vlan: Option<u16>,
    pub gateway: Option<String>,
    pub netmask: Option<String>,
    /// the guest's host name in this NIC's DHCP lease: on the VM's default L3 network only,
    /// its `hostname::` tag (the host part of a dotted name), else its IPv4 address with
    /// dashes for dots (upstream VmHostNameHelper); None in plans stored before it existed
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Everything the agent needs, read in the saga's transaction (kept in the saga's context;
/// the token is not: [`with_credentials`] reads it again before each use).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Plan {
    pub host: String,
    pub ip: String,
    #[serde(skip)]
    pub token: String,
    pub vm_uuid: String,
    pub name: String,
    pub cpu_num: i64,
    pub memory_size: i64,
    pub virtio: bool,
    pub tpm: bool,
    /// (image uuid, file on the backup storage, format); an `iso` is attached as the CD-ROM
    /// (booted first) and the root volume is made blank
    pub image: Option<(String, String, String)>,
    /// The VM has no CD-ROM (created with `createWithoutCdRom::true`): QEMU gets no drive.
    #[serde(default)]
    pub without_cdrom: bool,
    /// The guest's user data (the VM's `userdata::<base64>` system tag, decoded).
    #[serde(default)]
    pub user_data: Option<String>,
    /// The VM's `consolePassword::` system tag: QEMU's VNC display asks for it.
    #[serde(default)]
    pub console_password: Option<String>,
    /// The VM's `bootOrder::` system tag, split at its commas (see [`boot_order`]).
    #[serde(default)]
    pub boot_order: Option<Vec<String>>,
    pub cache_root: Option<String>,
    pub thick: bool,
    pub vols: Vec<Vol>,
    pub nics: Vec<NicPlan>,
    /// false: the volumes exist (starting a stopped VM)
    pub create_volumes: bool,
    /// false: only the volumes (CreateStopped); network and QEMU come with StartVmInstance
    pub start: bool,
}

impl Plan {
    fn agent(&self) -> KvmAgentClient {
        KvmAgentClient::new(&self.ip, &self.token)
    }

    fn err(&self, what: &str, e: AgentError) -> Error {
        Error::Api(ErrorCode::new(
            HOST_1005,
            format!("failed to {what} for vm[uuid:{}] on host[uuid:{}, ip:{}]: {e}", self.vm_uuid, self.host, self.ip),
        ))
    }
}

/// `p` with the host's current address and agent token (a plain read: no transaction is open
/// while the agent works). A deleted host keeps the planned address and no token.
pub async fn with_credentials(db: &crate::db::Db, p: &Plan) -> Result<Plan> {
    let mut p = p.clone();
    if let Some(r) = db
        .fetch_optional("SELECT management_ip, password FROM host WHERE uuid = $1", &[Val::from(p.host.as_str())])
        .await?
    {
        p.ip = r.try_get(0)?;
        p.token = r.try_get::<Option<String>, _>(1)?.unwrap_or_default();
    }
    Ok(p)
}

/// The tap of NIC `device` of `vm` (at most 15 characters).
pub fn tap_name(vm: &str, device: i64) -> String {
    format!("tap{}{}", vm.get(..8).unwrap_or(vm), device)
}

pub async fn plan(tx: &mut WriteTx, c: &Ctx, host: &str) -> Result<Plan> {
    let row = tx
        .fetch_optional("SELECT management_ip, password FROM host WHERE uuid = $1", &[Val::from(host)])
        .await?
        .ok_or_else(|| Error::not_found(format!("host[uuid:{host}] is not found, it may have been deleted")))?;
    let ip: String = row.try_get(0)?;
    let token: Option<String> = row.try_get(1)?;
    let refuse = |why: &str| {
        Error::Api(ErrorCode::new(
            HOST_1005,
            format!("cannot start vm[uuid:{}] on KVM host[uuid:{host}]: {why}", c.vm_uuid),
        ))
    };
    let mut image = None;
    let mut virtio = c.nic_driver.as_deref().is_none_or(|d| d == "virtio");
    if let Some(img) = &c.image_uuid {
        let r = tx
            .fetch_optional(
                "SELECT r.install_path, i.format, i.virtio FROM image_backup_storage_ref r JOIN image i ON i.uuid = r.image_uuid \
                 WHERE r.image_uuid = $1 AND r.status = 'Ready' AND r.install_path IS NOT NULL ORDER BY r.create_date LIMIT 1",
                &[Val::from(img.as_str())],
            )
            .await?
            .ok_or_else(|| refuse(&format!("image[uuid:{img}] is on no backup storage")))?;
        let path: String = r.try_get(0)?;
        let format: String = r.try_get(1)?;
        let v: i64 = r.try_get(2)?;
        virtio = virtio && v != 0;
        image = Some((img.clone(), path, format));
    }
    if c.from_snapshot.is_some() {
        // the root volume is a copy of the snapshot, not made from an image
        image = None;
    }
    let cache_root = match &c.ps {
        Some(ps) => tx
            .fetch_optional("SELECT url FROM primary_storage WHERE uuid = $1", &[Val::from(ps.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .filter(|u| u.starts_with('/')),
        None => None,
    };
    let (mut vols, thick, nics) = vols_and_nics(tx, &c.vm_uuid, &c.root_volume_uuid).await?;
    if let Some(snap) = &c.from_snapshot {
        let file = tx
            .fetch_optional(
                "SELECT primary_storage_install_path FROM volume_snapshot WHERE uuid = $1",
                &[Val::from(snap.as_str())],
            )
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten()
            .filter(|f| f.starts_with('/'))
            .ok_or_else(|| refuse(&format!("volume snapshot[uuid:{snap}] has no file on a KVM host")))?;
        for v in vols.iter_mut().filter(|v| v.root) {
            v.from_snapshot = Some(file.clone());
        }
    }
    let adopted: Vec<&str> = c
        .data_volumes
        .iter()
        .filter(|d| d.adopt)
        .map(|d| d.uuid.as_str())
        .chain(c.root_from_volume.then_some(c.root_volume_uuid.as_str()))
        .collect();
    for v in vols.iter_mut().filter(|v| adopted.contains(&v.uuid.as_str())) {
        v.existing = true;
        if !v.path.is_empty() {
            continue;
        }
        v.new_file = true;
        // an accounted-only volume gets its file now, where the VM's volumes go
        let dir = if v.root { "rootVolumes" } else { "dataVolumes" };
        let url = cache_root.clone().unwrap_or_default();
        v.path = format!("{}/{dir}/acct-{}/vol-{}/{}.qcow2", url.trim_end_matches('/'), c.account_uuid, v.uuid, v.uuid);
        if !v.path.starts_with('/') {
            return Err(refuse(&format!("volume[uuid:{}] has no file and its primary storage no path", v.uuid)));
        }
        tx.execute(
            "UPDATE volume SET install_path = $1, format = 'qcow2' WHERE uuid = $2 AND install_path IS NULL",
            &[Val::from(v.path.as_str()), Val::from(v.uuid.as_str())],
        )
        .await?;
    }
    let user_data = user_data_of(tx, &c.vm_uuid).await?;
    let (console_password, boot_order) = console_and_boot(tx, &c.vm_uuid).await?;
    Ok(Plan {
        host: host.to_string(),
        ip,
        token: token.unwrap_or_default(),
        vm_uuid: c.vm_uuid.clone(),
        name: c.name.clone(),
        cpu_num: c.cpu_num,
        memory_size: c.memory_size,
        virtio,
        tpm: c.tpm.is_some(),
        image,
        without_cdrom: without_cdrom(tx, &c.vm_uuid).await?,
        user_data,
        console_password,
        boot_order,
        cache_root,
        thick,
        vols,
        nics,
        create_volumes: true,
        start: c.strategy != "CreateStopped",
    })
}

/// The VM's volumes (by device id), whether its root volume is thick, and its NICs with their networks.
async fn vols_and_nics(tx: &mut WriteTx, vm: &str, root_volume: &str) -> Result<(Vec<Vol>, bool, Vec<NicPlan>)> {
    let mut vols = Vec::new();
    for r in tx
        .fetch_all(
            "SELECT v.uuid, v.install_path, v.type, v.size, v.device_id, \
             (SELECT COUNT(*) FROM system_tag t WHERE t.resource_uuid = v.uuid \
              AND t.tag = 'volumeProvisioningStrategy::ThickProvisioning'), \
             (SELECT i.uuid FROM image i WHERE i.uuid = v.root_image_uuid AND i.media_type = 'DataVolumeTemplate') \
             FROM volume v WHERE v.vm_instance_uuid = $1 ORDER BY v.device_id",
            &[Val::from(vm)],
        )
        .await?
    {
        let ty: String = r.try_get(2)?;
        let path: Option<String> = r.try_get(1)?;
        let template: Option<String> = r.try_get(6)?;
        let template = match template.filter(|_| ty != "Root") {
            Some(t) => tx
                .fetch_optional(
                    "SELECT r.install_path, i.format FROM image_backup_storage_ref r JOIN image i ON i.uuid = r.image_uuid \
                     WHERE r.image_uuid = $1 AND r.status = 'Ready' AND r.install_path IS NOT NULL \
                     ORDER BY r.create_date LIMIT 1",
                    &[Val::from(t.as_str())],
                )
                .await?
                .map(|b| Ok::<_, Error>((t, b.try_get::<String, _>(0)?, b.try_get::<String, _>(1)?)))
                .transpose()?,
            None => None,
        };
        vols.push(Vol {
            uuid: r.try_get(0)?,
            path: path.unwrap_or_default(),
            root: ty == "Root",
            size: r.try_get(3)?,
            device: r.try_get::<Option<i64>, _>(4)?.unwrap_or(0),
            existing: false,
            new_file: false,
            from_snapshot: None,
            thick: r.try_get::<i64, _>(5)? > 0,
            template,
        });
    }
    let thick = tx
        .fetch_optional(
            "SELECT 1 FROM system_tag WHERE resource_uuid = $1 AND tag = 'volumeProvisioningStrategy::ThickProvisioning'",
            &[Val::from(root_volume)],
        )
        .await?
        .is_some();
    let mut nics = Vec::new();
    for r in tx
        .fetch_all(
            "SELECT n.mac, n.ip, n.device_id, n.l3_network_uuid, l2.uuid, l2.physical_interface, l2.vlan, l2.type, \
             (SELECT v.default_l3_network_uuid FROM vm_instance v WHERE v.uuid = n.vm_instance_uuid), \
             (SELECT t.tag FROM system_tag t WHERE t.resource_uuid = n.vm_instance_uuid AND t.tag LIKE 'hostname::%' \
              ORDER BY t.create_date LIMIT 1) \
             FROM vm_nic n JOIN l3_network l3 ON l3.uuid = n.l3_network_uuid JOIN l2_network l2 ON l2.uuid = l3.l2_network_uuid \
             WHERE n.vm_instance_uuid = $1 ORDER BY n.device_id",
            &[Val::from(vm)],
        )
        .await?
    {
        let l3: String = r.try_get(3)?;
        let device: i64 = r.try_get(2)?;
        let ty: String = r.try_get(7)?;
        let vlan: Option<i64> = r.try_get(6)?;
        let range = tx
            .fetch_optional(
                "SELECT gateway, netmask FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 \
                 ORDER BY create_date LIMIT 1",
                &[Val::from(l3.as_str())],
            )
            .await?;
        let (gateway, netmask) = match range {
            Some(g) => (g.try_get::<Option<String>, _>(0)?, Some(g.try_get::<String, _>(1)?)),
            None => (None, None),
        };
        let ip: Option<String> = r.try_get(1)?;
        let default_l3: Option<String> = r.try_get(8)?;
        let tag: Option<String> = r.try_get(9)?;
        let hostname = if default_l3.as_deref() == Some(l3.as_str()) {
            lease_hostname(tag.as_deref().and_then(|t| t.strip_prefix("hostname::")), ip.as_deref())
        } else {
            None
        };
        nics.push(NicPlan {
            mac: r.try_get(0)?,
            ip,
            hostname,
            device,
            tap: tap_name(vm, device),
            l3,
            l2: r.try_get(4)?,
            interface: r.try_get(5)?,
            vlan: if ty == "L2VlanNetwork" { vlan.and_then(|v| u16::try_from(v).ok()) } else { None },
            gateway,
            netmask,
        });
    }
    Ok((vols, thick, nics))
}

/// The DHCP host name of the default NIC: the `hostname::` tag's host part, else the IPv4
/// address with dashes (upstream VmHostNameHelper).
fn lease_hostname(tag: Option<&str>, ip: Option<&str>) -> Option<String> {
    match tag {
        Some(h) => h.split('.').next().filter(|h| !h.is_empty()).map(String::from),
        None => ip.map(|ip| ip.replace('.', "-")),
    }
}

fn bridge_of(n: &NicPlan) -> BridgeSpec {
    BridgeSpec { l2_uuid: n.l2.clone(), physical_interface: n.interface.clone(), vlan: n.vlan, bridge_name: None }
}

fn is_iso(p: &Plan) -> bool {
    p.image.as_ref().is_some_and(|(_, _, f)| f == "iso")
}

/// The cached ISO attached as the CD-ROM, when the VM is made from an ISO image.
fn iso_of(p: &Plan, cached: Option<&str>) -> Option<String> {
    cached.filter(|_| is_iso(p)).map(String::from)
}

/// Make the VM's volume files: a root volume from the cached image (an overlay, or a thick
/// copy), from a snapshot (an independent copy: sparse, or thick), or blank (an ISO VM); data
/// volumes blank. Existing volumes (diskAOs sourceUuid) are used as they are.
async fn create_volumes(p: &Plan, agent: &KvmAgentClient, cached: Option<&str>) -> Result<()> {
    for v in &p.vols {
        if v.existing && !v.new_file {
            continue;
        }
        if let (true, Some(snap), false) = (v.root, &v.from_snapshot, p.thick) {
            agent
                .snapshot_volume(&VolumeSnapshotCmd {
                    version: PROTOCOL_VERSION,
                    snapshot_uuid: v.uuid.clone(),
                    volume_install_path: snap.clone(),
                    install_path: v.path.clone(),
                    vm_uuid: None,
                })
                .await
                .map_err(|e| p.err("copy the volume snapshot", e))?;
            continue;
        }
        let mut backing = match (&v.from_snapshot, v.root && !is_iso(p)) {
            (Some(snap), true) => Some(snap.clone()),
            (None, true) => cached.map(String::from),
            _ => None,
        };
        if let (false, Some((uuid, path, format))) = (v.root, &v.template) {
            let c = agent
                .cache_image(&ImageCacheCmd {
                    version: PROTOCOL_VERSION,
                    image_uuid: uuid.clone(),
                    source_path: path.clone(),
                    format: Some(format.clone()),
                    cache_root: p.cache_root.clone(),
                })
                .await
                .map_err(|e| p.err("cache the data volume template", e))?;
            backing = Some(c.install_path);
        }
        agent
            .create_volume(&VolumeCreateCmd {
                version: PROTOCOL_VERSION,
                volume_uuid: v.uuid.clone(),
                install_path: v.path.clone(),
                size: v.size,
                backing_file: backing,
                provisioning: if v.thick || (v.root && p.thick) {
                    Provisioning::ThickProvisioning
                } else {
                    Provisioning::ThinProvisioning
                },
            })
            .await
            .map_err(|e| p.err("create a volume", e))?;
    }
    Ok(())
}

/// The VM's user data, as upstream's UserdataBuilder makes it: its `userdata::<base64>` system
/// tag (`VmSystemTags.USERDATA`) decoded into text (`new String(bytes)`: bytes that are not
/// UTF-8 become U+FFFD), then, when the VM has SSH keys (its key pairs, `sshKeyPairUuids`, then
/// its `sshkey::` tag) or a `rootPassword::` tag, a `#cloud-config` document setting them. Both
/// together go as one MIME multipart document (how cloud-init takes several parts). Creation
/// refuses a userdata value that is not base64 ([`super::check_userdata`]); a tag stored before
/// that check, not base64 at all, is passed as the text it is.
async fn user_data_of(tx: &mut WriteTx, vm: &str) -> Result<Option<String>> {
    let rows = tx
        .fetch_all(
            "SELECT tag, create_date, 'tag' FROM system_tag WHERE resource_uuid = $1 \
             AND (tag LIKE 'userdata::%' OR tag LIKE 'sshkey::%' OR tag LIKE 'rootPassword::%') \
             UNION ALL SELECT k.public_key, r.create_date, 'key' FROM ssh_key_pair_ref r \
             JOIN ssh_key_pair k ON k.uuid = r.ssh_key_pair_uuid WHERE r.resource_uuid = $1 \
             ORDER BY 3 DESC, 2, 1",
            &[Val::from(vm)],
        )
        .await?;
    let (mut user, mut tag_key, mut password, mut keys) = (None, None, None, Vec::new());
    for r in &rows {
        let text: String = r.try_get(0)?;
        if r.try_get::<String, _>(2)? == "key" {
            keys.push(text);
        } else if let Some(v) = text.strip_prefix("userdata::") {
            user = user.or_else(|| Some(user_data_text(v)));
        } else if let Some(v) = text.strip_prefix("sshkey::") {
            tag_key = tag_key.or_else(|| Some(v.to_string()));
        } else if let Some(v) = text.strip_prefix("rootPassword::") {
            password = password.or_else(|| Some(v.to_string()));
        }
    }
    keys.extend(tag_key);
    Ok(combine_user_data(user, cloud_config(&keys, password.as_deref())))
}

/// The `#cloud-config` part for SSH keys and a root password (upstream UserdataBuilder's layout),
/// or None when there is neither.
fn cloud_config(keys: &[String], password: Option<&str>) -> Option<String> {
    if keys.is_empty() && password.is_none() {
        return None;
    }
    let mut s = String::from("#cloud-config");
    if !keys.is_empty() {
        s.push_str("\nssh_authorized_keys:");
        for k in keys {
            s.push_str(&format!("\n  - {k}"));
        }
        s.push_str("\ndisable_root: false");
    }
    if let Some(p) = password {
        s.push_str(&format!("\nchpasswd:\n  list: |\n    root:{p}\n  expire: False"));
    }
    Some(s)
}

/// One user-data document of the user's part and the cloud-config part: either alone as it
/// is, both as a MIME multipart document (each part typed by its first line).
fn combine_user_data(user: Option<String>, config: Option<String>) -> Option<String> {
    match (user, config) {
        (Some(u), Some(c)) => {
            let b = "==RZSTACK-USERDATA==";
            let ty = |t: &str| {
                if t.starts_with("#cloud-config") {
                    "text/cloud-config"
                } else if t.starts_with("#!") {
                    "text/x-shellscript"
                } else {
                    "text/plain"
                }
            };
            let part =
                |t: &str| format!("--{b}\nContent-Type: {}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{t}\n", ty(t));
            Some(format!(
                "Content-Type: multipart/mixed; boundary=\"{b}\"\nMIME-Version: 1.0\n\n{}{}--{b}--\n",
                part(&u),
                part(&c)
            ))
        }
        (u, c) => u.or(c),
    }
}

/// The guest's user data for a `userdata::` tag value (see [`user_data_of`]).
fn user_data_text(value: &str) -> String {
    match decode_base64(value) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => value.to_string(),
    }
}

/// Standard (or URL-safe) base64, padding optional, as bytes; None when it is not base64.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim().trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The bridges, taps and DHCP leases of the VM's NICs.
fn network_cmd(p: &Plan) -> NetworkPrepareCmd {
    let mut net = NetworkPrepareCmd { version: PROTOCOL_VERSION, ..Default::default() };
    for n in &p.nics {
        let b = bridge_of(n);
        let bridge = b.name();
        if !net.bridges.iter().any(|x| x.name() == bridge) {
            net.bridges.push(b);
        }
        net.taps.push(TapSpec {
            vm_uuid: p.vm_uuid.clone(),
            tap_name: n.tap.clone(),
            mac: n.mac.clone(),
            bridge_name: bridge.clone(),
        });
        if let (Some(gw), Some(mask), Some(ip)) = (&n.gateway, &n.netmask, &n.ip) {
            let lease = DhcpLease { mac: n.mac.clone(), ip: ip.clone(), hostname: n.hostname.clone() };
            match net.dhcp.iter_mut().find(|d| d.l3_uuid == n.l3) {
                Some(d) => d.leases.push(lease),
                None => net.dhcp.push(DhcpSpec {
                    l3_uuid: n.l3.clone(),
                    bridge_name: bridge,
                    gateway: gw.clone(),
                    netmask: mask.clone(),
                    dns: vec![],
                    dns_domain: None,
                    leases: vec![lease],
                }),
            }
        }
    }
    net
}

/// Cache the image, create the volumes, prepare the network, start QEMU. The disks (image
/// cache, then volumes) and the network are independent and prepared at the same time; both
/// run to their end before a failure is answered (the undo finds no half-done agent call).
pub async fn instantiate(p: &Plan) -> Result<()> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let agent = p.agent();
    let disks = async {
        let cached = match &p.image {
            Some((uuid, path, format)) => Some(
                agent
                    .cache_image(&ImageCacheCmd {
                        version: PROTOCOL_VERSION,
                        image_uuid: uuid.clone(),
                        source_path: path.clone(),
                        format: Some(format.clone()),
                        cache_root: p.cache_root.clone(),
                    })
                    .await
                    .map_err(|e| p.err("cache the image", e))?
                    .install_path,
            ),
            None => None,
        };
        tracing::info!(vm = %p.vm_uuid, ms = ms(t0), "instantiate: image cache");
        let t = std::time::Instant::now();
        if p.create_volumes {
            create_volumes(p, &agent, cached.as_deref()).await?;
        }
        tracing::info!(vm = %p.vm_uuid, ms = ms(t), "instantiate: volumes");
        Ok::<_, Error>(cached)
    };
    let network = async {
        if !p.start {
            return Ok(());
        }
        let net = network_cmd(p);
        if !net.taps.is_empty() {
            agent.prepare_network(&net).await.map_err(|e| p.err("prepare the network", e))?;
        }
        tracing::info!(vm = %p.vm_uuid, ms = ms(t0), "instantiate: network");
        Ok::<_, Error>(())
    };
    let (cached, net) = tokio::join!(disks, network);
    let cached = cached?;
    net?;
    if !p.start {
        return Ok(());
    }
    let t = std::time::Instant::now();
    let root = p
        .vols
        .iter()
        .find(|v| v.root)
        .ok_or_else(|| Error::operr(format!("vm[uuid:{}] has no root volume", p.vm_uuid)))?;
    let disk = |v: &Vol| VmDisk { volume_uuid: v.uuid.clone(), install_path: v.path.clone(), device_id: v.device };
    agent
        .start_vm(&VmStartCmd {
            version: PROTOCOL_VERSION,
            vm_uuid: p.vm_uuid.clone(),
            name: p.name.clone(),
            cpu_num: p.cpu_num,
            memory_size: p.memory_size,
            virtio: p.virtio,
            root_volume: VmDisk { device_id: 0, ..disk(root) },
            data_volumes: p.vols.iter().filter(|v| !v.root).map(disk).collect(),
            cdrom: iso_of(p, cached.as_deref()),
            cdrom_drive: !p.without_cdrom,
            nics: p
                .nics
                .iter()
                .map(|n| VmNicSpec { mac: n.mac.clone(), tap_name: n.tap.clone(), device_id: n.device })
                .collect(),
            boot_order: boot_order(p, iso_of(p, cached.as_deref()).is_some()),
            tpm: p.tpm,
            user_data: p.user_data.clone(),
            console_password: p.console_password.clone(),
        })
        .await
        .map_err(|e| p.err("start the vm", e))?;
    tracing::info!(vm = %p.vm_uuid, ms = ms(t), total_ms = ms(t0), "instantiate: vm started");
    Ok(())
}

/// Best effort: destroy the QEMU process, release taps and leases, delete the volume files.
pub async fn teardown(p: &Plan) {
    let agent = p.agent();
    if let Err(e) = agent.destroy_vm(&VmDestroyCmd { version: PROTOCOL_VERSION, vm_uuid: p.vm_uuid.clone() }).await {
        tracing::warn!("destroying vm {} on host {}: {e}", p.vm_uuid, p.host);
    }
    release(p, &agent).await;
    for v in &p.vols {
        if v.path.is_empty() || v.existing {
            continue;
        }
        if let Err(e) =
            agent.delete_volume(&VolumeDeleteCmd { version: PROTOCOL_VERSION, install_path: v.path.clone() }).await
        {
            tracing::warn!("deleting volume {} on host {}: {e}", v.path, p.host);
        }
    }
}

async fn release(p: &Plan, agent: &KvmAgentClient) {
    if p.nics.is_empty() {
        return;
    }
    let mut cmd = NetworkReleaseCmd { version: PROTOCOL_VERSION, ..Default::default() };
    for n in &p.nics {
        cmd.taps.push(n.tap.clone());
        match cmd.leases.iter_mut().find(|l| l.l3_uuid == n.l3) {
            Some(l) => l.macs.push(n.mac.clone()),
            None => cmd.leases.push(DhcpRelease { l3_uuid: n.l3.clone(), macs: vec![n.mac.clone()] }),
        }
    }
    if let Err(e) = agent.release_network(&cmd).await {
        tracing::warn!("releasing the network of vm {} on host {}: {e}", p.vm_uuid, p.host);
    }
}

/// The agent of the KVM host a VM runs on (none for simulator hosts or VMs without a host).
pub async fn agent_of_vm(db: &crate::db::Db, vm: &str) -> Result<Option<KvmAgentClient>> {
    let row = db
        .fetch_optional(
            "SELECT h.management_ip, h.password FROM vm_instance v JOIN host h ON h.uuid = v.host_uuid \
             WHERE v.uuid = $1 AND h.hypervisor_type = 'KVM'",
            &[Val::from(vm)],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let ip: String = r.try_get(0)?;
    let token: Option<String> = r.try_get(1)?;
    Ok(Some(KvmAgentClient::new(&ip, token.as_deref().unwrap_or_default())))
}

fn agent_err(vm: &str, what: &str, e: AgentError) -> Error {
    Error::operr(format!("failed to {what} vm[uuid:{vm}] on its KVM host: {e}"))
}

/// Stop a VM's QEMU on its KVM host (taps and leases stay for the next start).
pub async fn stop_on_host(db: &crate::db::Db, vm: &str, cold: bool) -> Result<()> {
    if let Some(agent) = agent_of_vm(db, vm).await? {
        agent
            .stop_vm(&VmStopCmd {
                version: PROTOCOL_VERSION,
                vm_uuid: vm.to_string(),
                mode: if cold { StopMode::Cold } else { StopMode::Grace },
                boot_order: None,
                timeout_secs: None,
            })
            .await
            .map_err(|e| agent_err(vm, "stop", e))?;
    }
    Ok(())
}

/// Destroy a VM's QEMU on its KVM host and release its taps and DHCP leases (its volumes stay
/// until expunge).
pub async fn destroy_on_host(db: &crate::db::Db, vm: &str) -> Result<()> {
    let Some(agent) = agent_of_vm(db, vm).await? else { return Ok(()) };
    agent
        .destroy_vm(&VmDestroyCmd { version: PROTOCOL_VERSION, vm_uuid: vm.to_string() })
        .await
        .map_err(|e| agent_err(vm, "destroy", e))?;
    let mut cmd = NetworkReleaseCmd { version: PROTOCOL_VERSION, ..Default::default() };
    for r in db
        .fetch_all(
            "SELECT mac, device_id, l3_network_uuid FROM vm_nic WHERE vm_instance_uuid = $1 ORDER BY device_id",
            &[Val::from(vm)],
        )
        .await?
    {
        let mac: String = r.try_get(0)?;
        let device: i64 = r.try_get(1)?;
        let l3: Option<String> = r.try_get(2)?;
        cmd.taps.push(tap_name(vm, device));
        if let Some(l3) = l3 {
            match cmd.leases.iter_mut().find(|l| l.l3_uuid == l3) {
                Some(l) => l.macs.push(mac),
                None => cmd.leases.push(DhcpRelease { l3_uuid: l3, macs: vec![mac] }),
            }
        }
    }
    if !cmd.taps.is_empty() {
        agent.release_network(&cmd).await.map_err(|e| agent_err(vm, "release the network of", e))?;
    }
    Ok(())
}

/// The plan to start a stopped VM on the KVM host `host` (its volumes exist): network, then
/// QEMU, carried out by [`instantiate`] outside the transaction. None when the host is not a
/// KVM host.
pub async fn start_plan(tx: &mut WriteTx, vm: &str, host: &str) -> Result<Option<Plan>> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT h.management_ip, h.password, v.name, v.cpu_num, v.memory_size, v.root_volume_uuid, \
             COALESCE((SELECT i.virtio FROM image i WHERE i.uuid = v.image_uuid), 1) \
             FROM host h JOIN vm_instance v ON v.uuid = $2 WHERE h.uuid = $1 AND h.hypervisor_type = 'KVM'",
            &[Val::from(host), Val::from(vm)],
        )
        .await?
    else {
        return Ok(None);
    };
    let root: Option<String> = row.try_get(5)?;
    let root = root.unwrap_or_default();
    let (vols, thick, nics) = vols_and_nics(tx, vm, &root).await?;
    let tpm = tx.fetch_optional("SELECT 1 FROM tpm WHERE vm_instance_uuid = $1", &[Val::from(vm)]).await?.is_some();
    let iso = attached_iso(tx, vm).await?;
    let (console_password, boot_order) = console_and_boot(tx, vm).await?;
    let plan = Plan {
        host: host.to_string(),
        ip: row.try_get(0)?,
        token: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        vm_uuid: vm.to_string(),
        name: row.try_get(2)?,
        cpu_num: row.try_get(3)?,
        memory_size: row.try_get(4)?,
        virtio: row.try_get::<i64, _>(6)? != 0,
        tpm,
        image: iso.as_ref().map(|i| i.0.clone()),
        without_cdrom: without_cdrom(tx, vm).await?,
        user_data: user_data_of(tx, vm).await?,
        console_password,
        boot_order,
        cache_root: iso.and_then(|i| i.1),
        thick,
        vols,
        nics,
        create_volumes: false,
        start: true,
    };
    Ok(Some(plan))
}

/// The VM's console password and boot order (its `consolePassword::` and `bootOrder::` system
/// tags, the oldest of each, as upstream reads one token). A boot order naming a device upstream
/// does not know (a tag put through CreateSystemTag, whose validator upstream never runs) fails
/// the start, as upstream's KVM host does.
async fn console_and_boot(tx: &mut WriteTx, vm: &str) -> Result<(Option<String>, Option<Vec<String>>)> {
    console_and_boot_of(&tx.fetch_all(CONSOLE_AND_BOOT_TAGS, &[Val::from(vm)]).await?)
}

/// A VM's `consolePassword::` and `bootOrder::` tags (`$1`: the VM), oldest first.
const CONSOLE_AND_BOOT_TAGS: &str = "SELECT tag FROM system_tag WHERE resource_uuid = $1 \
     AND (tag LIKE 'consolePassword::%' OR tag LIKE 'bootOrder::%') ORDER BY create_date, uuid";

/// The console password and boot order of the rows of [`CONSOLE_AND_BOOT_TAGS`].
fn console_and_boot_of(rows: &[sqlx::any::AnyRow]) -> Result<(Option<String>, Option<Vec<String>>)> {
    let (mut password, mut order) = (None, None);
    for r in rows {
        let tag: String = r.try_get(0)?;
        if let Some(v) = tag.strip_prefix("consolePassword::") {
            password = password.or_else(|| Some(v.to_string()));
        } else if let Some(v) = tag.strip_prefix("bootOrder::") {
            if order.is_none() {
                if let Some(bad) = v.split(',').find(|d| !super::checks::BOOT_DEVICES.contains(d)) {
                    return Err(Error::code(rzstack_api::codes::SYS_1000, format!("unknown boot device[{bad}]")));
                }
                order = Some(v.split(',').map(str::to_string).collect());
            }
        }
    }
    Ok((password, order))
}

/// The boot order of a start command. Creating from an ISO boots the CD-ROM first (upstream
/// boots a new VM from its ISO image); otherwise the VM's `bootOrder::` tag, minus a CD-ROM
/// when no ISO is in the drive (an empty drive boots nothing; the agent refuses it); Network
/// boots the VM's NICs (the agent gives them their place in the order); without the tag an ISO
/// first, then the disk (as before these tags were read), then the network.
fn boot_order(p: &Plan, has_iso: bool) -> Vec<String> {
    match &p.boot_order {
        Some(order) if !(p.create_volumes && has_iso) => {
            let mut out: Vec<String> = Vec::new();
            for d in order {
                let usable = d == "HardDisk" || d == "Network" || (d == "CdRom" && has_iso);
                if usable && !out.contains(d) {
                    out.push(d.clone());
                }
            }
            out
        }
        _ if has_iso => vec!["CdRom".into(), "HardDisk".into(), "Network".into()],
        // upstream's default (GetVmBootOrder answers it): the disk, then the network
        _ => vec!["HardDisk".into(), "Network".into()],
    }
}

/// A VM without CD-ROM records has no drive.
async fn without_cdrom(tx: &mut WriteTx, vm: &str) -> Result<bool> {
    Ok(tx.fetch_optional("SELECT 1 FROM vm_cdrom WHERE vm_instance_uuid = $1", &[Val::from(vm)]).await?.is_none())
}

/// The ISO in a VM's CD-ROM (its image, file on a backup storage, format) and the directory
/// holding the image cache (its root volume's primary storage).
async fn attached_iso(tx: &mut WriteTx, vm: &str) -> Result<Option<((String, String, String), Option<String>)>> {
    let Some(r) = tx
        .fetch_optional(
            "SELECT i.uuid, r.install_path, (SELECT p.url FROM vm_instance v JOIN volume vol ON vol.uuid = v.root_volume_uuid \
             JOIN primary_storage p ON p.uuid = vol.primary_storage_uuid WHERE v.uuid = $1) \
             FROM vm_cdrom c JOIN image i ON i.uuid = c.iso_uuid JOIN image_backup_storage_ref r ON r.image_uuid = i.uuid \
             WHERE c.vm_instance_uuid = $1 AND r.status = 'Ready' AND r.install_path IS NOT NULL \
             ORDER BY c.device_id, r.create_date LIMIT 1",
            &[Val::from(vm)],
        )
        .await?
    else {
        return Ok(None);
    };
    let url: Option<String> = r.try_get(2)?;
    Ok(Some(((r.try_get(0)?, r.try_get(1)?, "iso".to_string()), url.filter(|u| u.starts_with('/')))))
}

/// Best effort: end a VM's QEMU again (the undo of starting a stopped VM; its taps, leases and
/// volumes stay, as after a stop). Harmless when it never started.
pub async fn stop_started(p: &Plan) {
    if let Err(e) = p.agent().destroy_vm(&VmDestroyCmd { version: PROTOCOL_VERSION, vm_uuid: p.vm_uuid.clone() }).await
    {
        tracing::warn!("destroying vm {} on host {}: {e}", p.vm_uuid, p.host);
    }
}

/// The agent and root volume file of a Destroyed VM whose last host is a KVM host.
pub async fn expunge_target(db: &crate::db::Db, vm: &str) -> Result<Option<(KvmAgentClient, String)>> {
    let row = db
        .fetch_optional(
            "SELECT h.management_ip, h.password, vol.install_path FROM vm_instance v \
             JOIN host h ON h.uuid = v.last_host_uuid JOIN volume vol ON vol.vm_instance_uuid = v.uuid AND vol.type = 'Root' \
             WHERE v.uuid = $1 AND v.state = 'Destroyed' AND h.hypervisor_type = 'KVM'",
            &[Val::from(vm)],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let ip: String = r.try_get(0)?;
    let token: Option<String> = r.try_get(1)?;
    let path: Option<String> = r.try_get(2)?;
    Ok(path.filter(|p| p.starts_with('/')).map(|p| (KvmAgentClient::new(&ip, token.as_deref().unwrap_or_default()), p)))
}

/// Best effort: delete an expunged VM's root volume file on its host.
pub async fn delete_file(agent: &KvmAgentClient, path: &str) {
    if let Err(e) =
        agent.delete_volume(&VolumeDeleteCmd { version: PROTOCOL_VERSION, install_path: path.to_string() }).await
    {
        tracing::warn!("deleting volume {path}: {e}");
    }
}

/// Reboot a VM's QEMU on its KVM host (grace: ACPI power-down, then a fresh start), with the
/// boot order of the VM's `bootOrder::` tag as it is now (upstream's reboot sends it; without
/// the tag the recorded start's order stays).
pub async fn reboot_on_host(db: &crate::db::Db, vm: &str) -> Result<()> {
    if let Some(agent) = agent_of_vm(db, vm).await? {
        let (_, order) = console_and_boot_of(&db.fetch_all(CONSOLE_AND_BOOT_TAGS, &[Val::from(vm)]).await?)?;
        agent
            .reboot_vm(&VmStopCmd {
                version: PROTOCOL_VERSION,
                vm_uuid: vm.to_string(),
                mode: StopMode::Grace,
                timeout_secs: None,
                boot_order: order,
            })
            .await
            .map_err(|e| agent_err(vm, "reboot", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod user_data_tests {
    use super::user_data_text;

    #[test]
    fn lease_hostname_is_the_tag_host_part_or_the_dashed_ip() {
        use super::lease_hostname;
        assert_eq!(lease_hostname(Some("web-1"), Some("10.0.0.5")).as_deref(), Some("web-1"));
        assert_eq!(lease_hostname(Some("db01.example.com"), None).as_deref(), Some("db01"));
        assert_eq!(lease_hostname(None, Some("192.168.10.15")).as_deref(), Some("192-168-10-15"));
        assert_eq!(lease_hostname(None, None), None);
    }

    #[test]
    fn ssh_keys_and_root_password_make_a_cloud_config_part() {
        use super::{cloud_config, combine_user_data};
        assert_eq!(cloud_config(&[], None), None);
        let c = cloud_config(&["ssh-rsa A a@b".into(), "ssh-ed25519 B".into()], Some("pw")).unwrap();
        assert_eq!(
            c,
            "#cloud-config\nssh_authorized_keys:\n  - ssh-rsa A a@b\n  - ssh-ed25519 B\ndisable_root: false\n\
             chpasswd:\n  list: |\n    root:pw\n  expire: False"
        );
        assert_eq!(combine_user_data(None, Some(c.clone())), Some(c.clone()));
        assert_eq!(combine_user_data(Some("x".into()), None).as_deref(), Some("x"));
        let both = combine_user_data(Some("#!/bin/sh\necho hi".into()), Some(c)).unwrap();
        assert!(both.starts_with("Content-Type: multipart/mixed; boundary="), "{both}");
        assert!(both.contains("Content-Type: text/x-shellscript") && both.contains("Content-Type: text/cloud-config"));
        assert!(both.contains("#!/bin/sh\necho hi\n") && both.ends_with("--==RZSTACK-USERDATA==--\n"));
    }

    #[test]
    fn user_data_is_the_decoded_text() {
        // "#cloud-config\nhostname: t\n", padded and not
        assert_eq!(user_data_text("I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogdAo="), "#cloud-config\nhostname: t\n");
        assert_eq!(user_data_text("YWI"), "ab");
        // bytes that are not UTF-8 become U+FFFD (upstream decodes into a Java String), not the base64 text
        assert_eq!(user_data_text("/2E="), "\u{fffd}a");
        // a legacy value that is not base64 at all stays as it was given
        assert_eq!(user_data_text("#!/bin/sh\necho hi"), "#!/bin/sh\necho hi");
    }
}
