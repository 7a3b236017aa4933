//! The host-agent protocol: what the management node and the agent on a KVM host send each
//! other. JSON over HTTP, every body carrying `version`; serde types only, shared by both
//! sides (crates/server's `hostagent` client and crates/agent's server).
//!
//! Version 1. Endpoints (all `POST`, JSON bodies, `Authorization: Bearer <token>`):
//! - [`PATH_CONNECT`]: [`ConnectCmd`] → [`ConnectRsp`] (carries [`HostFacts`])
//! - [`PATH_PING`]: [`PingCmd`] → [`PingRsp`]
//! - [`PATH_IMAGE_CACHE`]: [`ImageCacheCmd`] → [`AgentRsp`]`<`[`ImageCacheInfo`]`>`
//! - [`PATH_VOLUME_CREATE`]: [`VolumeCreateCmd`] → [`AgentRsp`]`<`[`VolumeInfo`]`>`
//! - [`PATH_VOLUME_DELETE`]: [`VolumeDeleteCmd`] → [`AgentRsp`]`<`[`Deleted`]`>`
//! - [`PATH_VOLUME_SNAPSHOT`]: [`VolumeSnapshotCmd`] → [`AgentRsp`]`<`[`VolumeInfo`]`>`
//! - [`PATH_VOLUME_RESIZE`]: [`VolumeResizeCmd`] → [`AgentRsp`]`<`[`VolumeInfo`]`>`
//! - [`PATH_VOLUME_REVERT`]: [`VolumeRevertCmd`] → [`AgentRsp`]`<`[`VolumeInfo`]`>`
//! - [`PATH_VM_START`]: [`VmStartCmd`] → [`AgentRsp`]`<`[`VmState`]`>`
//! - [`PATH_VM_STOP`], [`PATH_VM_REBOOT`]: [`VmStopCmd`] → [`AgentRsp`]`<`[`VmState`]`>`
//! - [`PATH_VM_DESTROY`]: [`VmDestroyCmd`] → [`AgentRsp`]`<`[`VmState`]`>`
//! - [`PATH_VM_STATUS`]: [`VmStatusCmd`] → [`AgentRsp`]`<`[`VmStatusList`]`>`
//! - [`PATH_NETWORK_PREPARE`]: [`NetworkPrepareCmd`] → [`AgentRsp`]`<`[`NetworkPrepared`]`>`
//! - [`PATH_NETWORK_RELEASE`]: [`NetworkReleaseCmd`] → [`AgentRsp`]`<`[`Deleted`]`>`
//! - [`PATH_STORAGE_CAPACITY`]: [`StorageCapacityCmd`] → [`AgentRsp`]`<`[`StorageCapacity`]`>`
//!
//! Every command has a `validate()` that both the agent and the management node's simulator
//! run, so a simulated host refuses what a real one would.
//!
//! An answer with `success: false` is a refusal whose `error` text is the reason. An agent
//! refuses (HTTP 401, an [`ErrorRsp`] body) a caller without the right bearer token, and
//! answers `success: false` to a command of another protocol version.

use serde::{Deserialize, Serialize};

/// The protocol version both sides speak.
pub const PROTOCOL_VERSION: u32 = 1;
/// The port the KVM agent listens on (upstream's kvmagent port).
pub const DEFAULT_PORT: u16 = 7070;
pub const PATH_CONNECT: &str = "/v1/host/connect";
pub const PATH_PING: &str = "/v1/host/ping";

/// Which accelerator QEMU uses on a host.
pub const ACCEL_KVM: &str = "kvm";
pub const ACCEL_TCG: &str = "tcg";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectCmd {
    pub version: u32,
    pub host_uuid: String,
    /// The management node's uuid (the agent reports back to it in later versions).
    pub management_node_uuid: String,
}

/// What a host is, as its agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    pub cpu_num: i64,
    pub cpu_sockets: i64,
    pub cpu_model_name: String,
    /// Total memory in bytes.
    pub memory_bytes: i64,
    /// e.g. `KVM`
    pub hypervisor_type: String,
    /// The QEMU version, e.g. `7.2.19`; empty when QEMU is not installed.
    pub hypervisor_version: String,
    /// e.g. `x86_64`, `aarch64`
    pub architecture: String,
    /// [`ACCEL_KVM`] (hardware virtualization) or [`ACCEL_TCG`] (emulation)
    pub accelerator: String,
    #[serde(default)]
    pub os_distribution: Option<String>,
    #[serde(default)]
    pub os_release: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectRsp {
    pub version: u32,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub facts: Option<HostFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PingCmd {
    pub version: u32,
    pub host_uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PingRsp {
    pub version: u32,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The host uuid the agent believes it serves (a mismatch means another MN took it).
    #[serde(default)]
    pub host_uuid: Option<String>,
}

/// The body of a refusal that is not an answer to a command (bad token, unreadable body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRsp {
    pub version: u32,
    pub success: bool,
    pub error: String,
}

impl ErrorRsp {
    pub fn new(error: impl Into<String>) -> Self {
        ErrorRsp { version: PROTOCOL_VERSION, success: false, error: error.into() }
    }
}

pub const PATH_IMAGE_CACHE: &str = "/v1/image/cache";
pub const PATH_VOLUME_CREATE: &str = "/v1/volume/create";
pub const PATH_VOLUME_DELETE: &str = "/v1/volume/delete";
pub const PATH_VOLUME_SNAPSHOT: &str = "/v1/volume/snapshot";
pub const PATH_VOLUME_RESIZE: &str = "/v1/volume/resize";
pub const PATH_VOLUME_REVERT: &str = "/v1/volume/revert";
pub const PATH_VM_START: &str = "/v1/vm/start";
pub const PATH_VM_STOP: &str = "/v1/vm/stop";
pub const PATH_VM_REBOOT: &str = "/v1/vm/reboot";
pub const PATH_VM_DESTROY: &str = "/v1/vm/destroy";
pub const PATH_VM_STATUS: &str = "/v1/vm/status";
pub const PATH_NETWORK_PREPARE: &str = "/v1/network/prepare";
pub const PATH_NETWORK_RELEASE: &str = "/v1/network/release";
pub const PATH_STORAGE_CAPACITY: &str = "/v1/storage/capacity";
/// [`VmVolumeCmd`] → [`AgentRsp`]`<`[`VmState`]`>`: hot-plug a data volume into a running VM.
pub const PATH_VM_VOLUME_ATTACH: &str = "/v1/vm/volume/attach";
/// [`VmVolumeCmd`] → [`AgentRsp`]`<`[`VmState`]`>`: hot-unplug a data volume from a running VM.
pub const PATH_VM_VOLUME_DETACH: &str = "/v1/vm/volume/detach";
/// [`VmNicCmd`] → [`AgentRsp`]`<`[`VmState`]`>`: hot-plug a NIC (its tap exists) into a running VM.
pub const PATH_VM_NIC_ATTACH: &str = "/v1/vm/nic/attach";
/// [`VmNicCmd`] → [`AgentRsp`]`<`[`VmState`]`>`: hot-unplug a NIC (found by its MAC) from a running VM.
pub const PATH_VM_NIC_DETACH: &str = "/v1/vm/nic/detach";
/// [`VmCdromCmd`] → [`AgentRsp`]`<`[`VmState`]`>`: insert an ISO into (or eject the medium of)
/// the CD-ROM drive of a running VM.
pub const PATH_VM_CDROM_CHANGE: &str = "/v1/vm/cdrom/change";
/// [`VmConsoleCmd`] → [`AgentRsp`]`<`[`VmConsole`]`>`: the VNC address of a running VM.
pub const PATH_VM_CONSOLE: &str = "/v1/vm/console";

/// The answer to every command after connect/ping: `result` is set when `success` is true,
/// `error` (the reason) when it is false.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentRsp<T> {
    pub version: u32,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default = "none")]
    pub result: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> AgentRsp<T> {
    pub fn ok(result: T) -> Self {
        AgentRsp { version: PROTOCOL_VERSION, success: true, error: None, result: Some(result) }
    }
    pub fn err(error: impl Into<String>) -> Self {
        AgentRsp { version: PROTOCOL_VERSION, success: false, error: Some(error.into()), result: None }
    }
}

fn check_abs_path(what: &str, p: &str) -> Result<(), String> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(format!("{what} must be an absolute path, not {p:?}"));
    }
    if p.split('/').any(|c| c == "..") || p.contains('\0') || p.contains(',') {
        return Err(format!("{what} {p:?} must not contain '..', ',' or NUL"));
    }
    Ok(())
}

/// ZStack uuids: 32 lowercase hex digits (dashed forms are accepted too).
fn check_uuid(what: &str, u: &str) -> Result<(), String> {
    let hex: String = u.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || u.contains('/') {
        return Err(format!("{what} {u:?} is not a uuid"));
    }
    Ok(())
}

/// A Linux interface name: 1-15 bytes of letters, digits, `_`, `-`, `.`.
pub fn check_ifname(what: &str, n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return Err(format!("{what} {n:?} is not a valid interface name (1-15 of [A-Za-z0-9_.-])"));
    }
    Ok(())
}

/// A unicast MAC address `xx:xx:xx:xx:xx:xx` (lowercase or uppercase hex).
pub fn check_mac(m: &str) -> Result<(), String> {
    let parts: Vec<&str> = m.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if !ok {
        return Err(format!("{m:?} is not a MAC address"));
    }
    if u8::from_str_radix(parts[0], 16).unwrap_or(1) & 1 == 1 {
        return Err(format!("{m} is a multicast MAC address"));
    }
    Ok(())
}

fn check_ipv4(what: &str, ip: &str) -> Result<(), String> {
    ip.parse::<std::net::Ipv4Addr>().map(|_| ()).map_err(|_| format!("{what} {ip:?} is not an IPv4 address"))
}

/// Put an image from a backup storage into the host's image cache
/// (`<cacheRoot>/imagecache/template/<imageUuid>/<imageUuid>.qcow2`, ISOs as
/// `<cacheRoot>/imagecache/iso/<imageUuid>/<imageUuid>.iso`), once: a cached image is
/// answered as it is. Raw images are converted to qcow2.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheCmd {
    pub version: u32,
    pub image_uuid: String,
    /// Where the image is on this host (a backup storage directory or a mount).
    pub source_path: String,
    /// `qcow2`, `raw` or `iso`; `None` = what `qemu-img info` says.
    #[serde(default)]
    pub format: Option<String>,
    /// The directory holding `imagecache/` (e.g. the local primary storage's url); `None` =
    /// the agent's data directory.
    #[serde(default)]
    pub cache_root: Option<String>,
}

impl ImageCacheCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("imageUuid", &self.image_uuid)?;
        check_abs_path("sourcePath", &self.source_path)?;
        if let Some(r) = &self.cache_root {
            check_abs_path("cacheRoot", r)?;
        }
        match self.format.as_deref() {
            None | Some("qcow2") | Some("raw") | Some("iso") => Ok(()),
            Some(f) => Err(format!("unsupported image format {f:?}: use qcow2, raw or iso")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheInfo {
    pub install_path: String,
    /// `qcow2` or `iso`.
    pub format: String,
    /// Virtual size in bytes.
    pub size: i64,
    /// Bytes used on disk.
    pub actual_size: i64,
}

/// `volumeProvisioningStrategy` (upstream's names).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Provisioning {
    /// A qcow2 that grows as the guest writes (a root volume: an overlay on the cached image).
    #[default]
    ThinProvisioning,
    /// Fully allocated (`actualSize` ≈ `size`), independent of any other file.
    ThickProvisioning,
}

/// Create a qcow2 volume at `installPath`. With `backingFile` (a cached image or a
/// snapshot): Thin = an overlay backed by it, Thick = an independent, fully allocated copy.
/// Without: an empty volume of `size` bytes. Creating a volume that exists with the same
/// backing file answers it as it is (replays are harmless).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeCreateCmd {
    pub version: u32,
    pub volume_uuid: String,
    pub install_path: String,
    /// Virtual size in bytes; 0 = the backing file's size. Never smaller than the backing file.
    pub size: i64,
    #[serde(default)]
    pub backing_file: Option<String>,
    #[serde(default)]
    pub provisioning: Provisioning,
}

impl VolumeCreateCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("volumeUuid", &self.volume_uuid)?;
        check_abs_path("installPath", &self.install_path)?;
        if let Some(b) = &self.backing_file {
            check_abs_path("backingFile", b)?;
            if b == &self.install_path {
                return Err("backingFile and installPath are the same file".into());
            }
        }
        if self.size < 0 || (self.size == 0 && self.backing_file.is_none()) {
            return Err(format!("a volume needs a positive size, not {}", self.size));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInfo {
    pub install_path: String,
    pub format: String,
    /// Virtual size in bytes.
    pub size: i64,
    /// Bytes used on disk.
    pub actual_size: i64,
    #[serde(default)]
    pub backing_file: Option<String>,
}

/// Delete a volume file, the snapshots kept next to it (`<its directory>/snapshots/*.qcow2`),
/// and its directory when it is left empty; a missing file is success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDeleteCmd {
    pub version: u32,
    pub install_path: String,
}

impl VolumeDeleteCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_abs_path("installPath", &self.install_path)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    /// False when there was nothing to delete.
    pub deleted: bool,
}

/// Snapshot a volume: an independent qcow2 at `installPath` holding the volume's current
/// content (its backing chain flattened), usable as a `backingFile` or a new volume's source.
/// A stopped VM's volume is copied with qemu-img; with `vmUuid` of a running VM, QEMU copies
/// it (QMP `drive-backup`, sync=full: a point-in-time copy, the guest keeps running). A volume
/// in use by a running QEMU without `vmUuid` is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotCmd {
    pub version: u32,
    pub snapshot_uuid: String,
    pub volume_install_path: String,
    pub install_path: String,
    /// The VM the volume is attached to, if any.
    #[serde(default)]
    pub vm_uuid: Option<String>,
}

impl VolumeSnapshotCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("snapshotUuid", &self.snapshot_uuid)?;
        if let Some(v) = &self.vm_uuid {
            check_uuid("vmUuid", v)?;
        }
        check_abs_path("volumeInstallPath", &self.volume_install_path)?;
        check_abs_path("installPath", &self.install_path)?;
        if self.volume_install_path == self.install_path {
            return Err("the snapshot cannot overwrite its volume".into());
        }
        Ok(())
    }
}

/// Revert a volume to a snapshot: the file at `installPath` is replaced (atomically, by a
/// rename) with an independent qcow2 copy of `snapshotInstallPath`, which stays as it is.
/// Refused while a running QEMU holds the volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRevertCmd {
    pub version: u32,
    pub snapshot_install_path: String,
    pub install_path: String,
}

impl VolumeRevertCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_abs_path("snapshotInstallPath", &self.snapshot_install_path)?;
        check_abs_path("installPath", &self.install_path)?;
        if self.snapshot_install_path == self.install_path {
            return Err("the snapshot and the volume are the same file".into());
        }
        Ok(())
    }
}

/// Grow a volume to `size` bytes (never shrink). With `vmUuid` of a running VM whose disk it
/// is, QEMU grows it (QMP `block_resize`, the guest sees the new size); else `qemu-img resize`
/// (refused while a running QEMU holds the file). Growing to the size it has is success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeResizeCmd {
    pub version: u32,
    pub install_path: String,
    /// The new virtual size in bytes.
    pub size: i64,
    /// The VM the volume is attached to, if any.
    #[serde(default)]
    pub vm_uuid: Option<String>,
}

impl VolumeResizeCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_abs_path("installPath", &self.install_path)?;
        if let Some(v) = &self.vm_uuid {
            check_uuid("vmUuid", v)?;
        }
        if self.size <= 0 {
            return Err(format!("a volume needs a positive size, not {}", self.size));
        }
        Ok(())
    }
}

/// The capacity of the filesystem holding `path` (a primary storage's url, created when
/// missing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageCapacityCmd {
    pub version: u32,
    pub path: String,
}

impl StorageCapacityCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_abs_path("path", &self.path)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageCapacity {
    pub path: String,
    /// Bytes.
    pub total_capacity: i64,
    /// Bytes free for this agent's use.
    pub available_capacity: i64,
}

/// A disk of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmDisk {
    pub volume_uuid: String,
    pub install_path: String,
    /// 0 = the root volume.
    pub device_id: i64,
}

/// A NIC of a VM: a tap (made by network/prepare) on a bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNicSpec {
    pub mac: String,
    pub tap_name: String,
    pub device_id: i64,
}

/// Start a VM: one QEMU process (q35, BIOS) booting from the root volume, or from the CD-ROM
/// first when `bootOrder` says so. Starting a running VM answers its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmStartCmd {
    pub version: u32,
    pub vm_uuid: String,
    #[serde(default)]
    pub name: String,
    pub cpu_num: i64,
    /// Bytes.
    pub memory_size: i64,
    /// virtio disks and NICs; false = emulated (AHCI disks, e1000 NICs).
    #[serde(default = "yes")]
    pub virtio: bool,
    pub root_volume: VmDisk,
    #[serde(default)]
    pub data_volumes: Vec<VmDisk>,
    /// An ISO file attached as a CD-ROM.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// A CD-ROM drive (`cdrom0`, empty unless `cdrom` is given) whose medium can be changed
    /// while the VM runs; false = no drive unless `cdrom` is given (upstream `createWithoutCdRom`).
    #[serde(default = "yes")]
    pub cdrom_drive: bool,
    #[serde(default)]
    pub nics: Vec<VmNicSpec>,
    /// `CdRom`, `HardDisk` and/or `Network` (the start-time NICs), first boots first; empty =
    /// HardDisk (then CdRom); the disk and the CD-ROM boot after the named devices when not named.
    #[serde(default)]
    pub boot_order: Vec<String>,
    /// A TPM 2.0 through swtpm (`devices.tpm.enable`).
    #[serde(default)]
    pub tpm: bool,
    /// User data for the guest (upstream's `userdata`), readable inside the guest through
    /// QEMU's firmware config as `opt/rzstack/userdata`
    /// (`/sys/firmware/qemu_fw_cfg/by_name/opt/rzstack/userdata/raw` on Linux).
    #[serde(default)]
    pub user_data: Option<String>,
    /// The VNC console's password (upstream `consolePassword`): VNC authentication (RFB
    /// security type 2) instead of none. RFB uses at most its first 8 characters; an empty
    /// one lets no VNC client in.
    #[serde(default)]
    pub console_password: Option<String>,
}

/// The longest console password a VM takes (bytes); RFB's VNC authentication uses the first 8.
pub const MAX_CONSOLE_PASSWORD: usize = 1024;

/// The most user data a VM takes (bytes).
pub const MAX_USER_DATA: usize = 64 * 1024;

fn yes() -> bool {
    true
}

/// Guests need at least this much memory (see vm-notes: smaller ones do not boot).
pub const MIN_VM_MEMORY: i64 = 64 << 20;

impl VmStartCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        if !(1..=512).contains(&self.cpu_num) {
            return Err(format!("cpuNum must be 1-512, not {}", self.cpu_num));
        }
        if self.memory_size < MIN_VM_MEMORY || self.memory_size % (1 << 20) != 0 {
            return Err(format!(
                "memorySize must be a multiple of 1 MiB and at least {MIN_VM_MEMORY} bytes, not {}",
                self.memory_size
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for d in std::iter::once(&self.root_volume).chain(&self.data_volumes) {
            check_uuid("volumeUuid", &d.volume_uuid)?;
            check_abs_path("installPath", &d.install_path)?;
            if !ids.insert(d.device_id) || d.device_id < 0 {
                return Err(format!("disk deviceId {} is negative or used twice", d.device_id));
            }
        }
        if self.root_volume.device_id != 0 {
            return Err("the root volume's deviceId must be 0".into());
        }
        if let Some(c) = &self.cdrom {
            check_abs_path("cdrom", c)?;
        }
        let mut macs = std::collections::HashSet::new();
        for n in &self.nics {
            check_mac(&n.mac)?;
            check_ifname("tapName", &n.tap_name)?;
            if !macs.insert(n.mac.to_ascii_lowercase()) {
                return Err(format!("MAC {} is used by two NICs", n.mac));
            }
        }
        for b in &self.boot_order {
            if b != "CdRom" && b != "HardDisk" && b != "Network" {
                return Err(format!("unknown boot device {b:?}: use CdRom, HardDisk or Network"));
            }
        }
        if let Some(pw) = &self.console_password {
            if pw.len() > MAX_CONSOLE_PASSWORD || pw.contains('\0') {
                return Err(format!("consolePassword must be at most {MAX_CONSOLE_PASSWORD} bytes without NUL"));
            }
        }
        if self.user_data.as_ref().is_some_and(|u| u.len() > MAX_USER_DATA) {
            return Err(format!("userData must be at most {MAX_USER_DATA} bytes"));
        }
        if self.boot_order.iter().any(|b| b == "CdRom") && self.cdrom.is_none() {
            return Err("bootOrder has CdRom but no cdrom is attached".into());
        }
        Ok(())
    }
}

/// How to stop a VM (upstream `type`: grace or cold).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// ACPI power-down, then forced off when the guest has not powered off in `timeoutSecs`.
    #[default]
    Grace,
    /// Off at once.
    Cold,
}

/// Stop (or, on [`PATH_VM_REBOOT`], stop and start again) a VM; a stopped VM is success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmStopCmd {
    pub version: u32,
    pub vm_uuid: String,
    #[serde(default)]
    pub mode: StopMode,
    /// The grace period; `None` = [`DEFAULT_STOP_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A reboot's boot order for the new start (as [`VmStartCmd::boot_order`]; a `CdRom` is
    /// dropped when no ISO is in the drive); `None`: the order of the recorded start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<Vec<String>>,
}

pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 60;

impl VmStopCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        if self.timeout_secs.is_some_and(|t| t > 3600) {
            return Err("timeoutSecs must be at most 3600".into());
        }
        Ok(())
    }
    pub fn grace_secs(&self) -> u64 {
        match self.mode {
            StopMode::Cold => 0,
            StopMode::Grace => self.timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
        }
    }
}

/// Power a VM off at once and forget it on this host (its run directory and serial log go).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmDestroyCmd {
    pub version: u32,
    pub vm_uuid: String,
}

impl VmDestroyCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)
    }
}

/// The state of the given VMs; an empty list = every VM this agent knows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmStatusCmd {
    pub version: u32,
    #[serde(default)]
    pub vm_uuids: Vec<String>,
}

impl VmStatusCmd {
    pub fn validate(&self) -> Result<(), String> {
        self.vm_uuids.iter().try_for_each(|u| check_uuid("vmUuid", u))
    }
}

/// Hot-plug ([`PATH_VM_VOLUME_ATTACH`]) or hot-unplug ([`PATH_VM_VOLUME_DETACH`]) a data
/// volume of a running VM (a virtio-blk device with the id `vd<deviceId>`); the VM's recorded
/// start command follows. Doing it again is success; a VM that does not run is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmVolumeCmd {
    pub version: u32,
    pub vm_uuid: String,
    pub volume: VmDisk,
}

/// Hot-plug ([`PATH_VM_NIC_ATTACH`]) or hot-unplug ([`PATH_VM_NIC_DETACH`]) a NIC of a running
/// VM (a virtio-net device on the NIC's tap, made by network/prepare); the VM's recorded start
/// command follows. Doing it again is success; a VM that does not run is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmNicCmd {
    pub version: u32,
    pub vm_uuid: String,
    pub nic: VmNicSpec,
}

impl VmNicCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        check_mac(&self.nic.mac)?;
        check_ifname("tapName", &self.nic.tap_name)?;
        if self.nic.device_id < 0 {
            return Err(format!("a NIC's deviceId must not be negative, got {}", self.nic.device_id));
        }
        Ok(())
    }
}

impl VmVolumeCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        check_uuid("volumeUuid", &self.volume.volume_uuid)?;
        check_abs_path("installPath", &self.volume.install_path)?;
        if self.volume.device_id < 1 {
            return Err(format!("a data volume's deviceId must be at least 1, got {}", self.volume.device_id));
        }
        Ok(())
    }
}

/// Change the medium of a running VM's CD-ROM drive: `iso` (a file on this host) inserted,
/// read-only, in place of any medium; `None` = ejected. The VM's recorded start command
/// follows. A VM started without a CD-ROM drive is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmCdromCmd {
    pub version: u32,
    pub vm_uuid: String,
    #[serde(default)]
    pub iso: Option<String>,
}

impl VmCdromCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        if let Some(i) = &self.iso {
            check_abs_path("iso", i)?;
        }
        Ok(())
    }
}

/// Ask for the console of a running VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmConsoleCmd {
    pub version: u32,
    pub vm_uuid: String,
}

impl VmConsoleCmd {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)
    }
}

/// A running VM's console: `protocol` `vnc`, the TCP port QEMU listens on (on every address
/// of the host).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmConsole {
    pub vm_uuid: String,
    pub protocol: String,
    pub port: u16,
}

pub const VM_RUNNING: &str = "Running";
pub const VM_PAUSED: &str = "Paused";
pub const VM_STOPPED: &str = "Stopped";
/// The agent has never started (or has destroyed) this VM.
pub const VM_UNKNOWN: &str = "Unknown";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmState {
    pub vm_uuid: String,
    /// [`VM_RUNNING`], [`VM_PAUSED`], [`VM_STOPPED`] or [`VM_UNKNOWN`].
    pub state: String,
    #[serde(default)]
    pub pid: Option<u32>,
    /// QMP `query-status` (`running`, `paused`, `prelaunch`, ...).
    #[serde(default)]
    pub qmp_status: Option<String>,
    /// The serial console log file.
    #[serde(default)]
    pub serial_log: Option<String>,
    /// How the last stop ended: `graceful` or `forced`.
    #[serde(default)]
    pub stopped_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmStatusList {
    pub vms: Vec<VmState>,
}

/// A Linux bridge for an L2 network: over `physicalInterface` (NoVlan) or over its VLAN
/// sub-interface `<physicalInterface>.<vlan>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeSpec {
    pub l2_uuid: String,
    pub physical_interface: String,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// `None` = [`BridgeSpec::default_name`].
    #[serde(default)]
    pub bridge_name: Option<String>,
}

impl BridgeSpec {
    /// `br_<if>` or `br_<if>_<vlan>` (upstream's naming).
    pub fn default_name(&self) -> String {
        match self.vlan {
            None => format!("br_{}", self.physical_interface),
            Some(v) => format!("br_{}_{v}", self.physical_interface),
        }
    }
    pub fn name(&self) -> String {
        self.bridge_name.clone().unwrap_or_else(|| self.default_name())
    }
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("l2Uuid", &self.l2_uuid)?;
        check_ifname("physicalInterface", &self.physical_interface)?;
        if let Some(v) = self.vlan {
            if !(1..=4094).contains(&v) {
                return Err(format!("vlan must be 1-4094, not {v}"));
            }
            check_ifname("VLAN interface", &format!("{}.{v}", self.physical_interface))?;
        }
        check_ifname("bridgeName", &self.name())
    }
}

/// A tap for a VM NIC, on `bridgeName`. The tap's own MAC is the NIC's with the first byte
/// 0xfe (a bridge port must not carry the guest's MAC, or the bridge keeps the guest's frames
/// for the host); its alias records the NIC's MAC and VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TapSpec {
    pub vm_uuid: String,
    pub tap_name: String,
    pub mac: String,
    pub bridge_name: String,
}

impl TapSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("vmUuid", &self.vm_uuid)?;
        check_ifname("tapName", &self.tap_name)?;
        check_ifname("bridgeName", &self.bridge_name)?;
        check_mac(&self.mac)
    }
}

/// One static DHCP lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpLease {
    pub mac: String,
    pub ip: String,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// The DHCP server of an L3 network: a dnsmasq on `bridgeName` handing out only the static
/// leases given (added to the ones it has), the gateway address put on the bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpSpec {
    pub l3_uuid: String,
    pub bridge_name: String,
    pub gateway: String,
    pub netmask: String,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_domain: Option<String>,
    #[serde(default)]
    pub leases: Vec<DhcpLease>,
}

/// Prefix length of a contiguous IPv4 netmask.
pub fn netmask_prefix(mask: &str) -> Option<u32> {
    let m: u32 = mask.parse::<std::net::Ipv4Addr>().ok()?.into();
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0).then_some(p)
}

impl DhcpSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_uuid("l3Uuid", &self.l3_uuid)?;
        check_ifname("bridgeName", &self.bridge_name)?;
        check_ipv4("gateway", &self.gateway)?;
        match netmask_prefix(&self.netmask) {
            Some(p) if (8..=30).contains(&p) => {}
            _ => return Err(format!("netmask {:?} is not a netmask of /8 to /30", self.netmask)),
        }
        for d in &self.dns {
            check_ipv4("dns", d)?;
        }
        if let Some(d) = &self.dns_domain {
            if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)) {
                return Err(format!("dnsDomain {d:?} is not a domain name"));
            }
        }
        let (mut macs, mut ips) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        for l in &self.leases {
            check_mac(&l.mac)?;
            check_ipv4("lease ip", &l.ip)?;
            if l.ip == self.gateway {
                return Err(format!("lease ip {} is the gateway", l.ip));
            }
            if let Some(h) = &l.hostname {
                if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(format!("hostname {h:?} is not a host name"));
                }
            }
            if !macs.insert(l.mac.to_ascii_lowercase()) || !ips.insert(l.ip.clone()) {
                return Err(format!("the lease {} → {} repeats a MAC or an IP", l.mac, l.ip));
            }
        }
        Ok(())
    }
}

/// Make sure bridges, taps and DHCP servers exist (idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPrepareCmd {
    pub version: u32,
    #[serde(default)]
    pub bridges: Vec<BridgeSpec>,
    #[serde(default)]
    pub taps: Vec<TapSpec>,
    #[serde(default)]
    pub dhcp: Vec<DhcpSpec>,
}

impl NetworkPrepareCmd {
    pub fn validate(&self) -> Result<(), String> {
        self.bridges.iter().try_for_each(BridgeSpec::validate)?;
        self.taps.iter().try_for_each(TapSpec::validate)?;
        self.dhcp.iter().try_for_each(DhcpSpec::validate)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPrepared {
    /// The bridge names, in the order of the command's `bridges`.
    pub bridges: Vec<String>,
}

/// Leases to drop from an L3's DHCP server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpRelease {
    pub l3_uuid: String,
    pub macs: Vec<String>,
}

/// Undo network/prepare: delete taps, drop leases, stop DHCP servers, delete bridges (their
/// VLAN sub-interfaces too). Missing things are success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkReleaseCmd {
    pub version: u32,
    #[serde(default)]
    pub taps: Vec<String>,
    #[serde(default)]
    pub leases: Vec<DhcpRelease>,
    /// L3 uuids whose dnsmasq stops.
    #[serde(default)]
    pub dhcp: Vec<String>,
    #[serde(default)]
    pub bridges: Vec<String>,
}

impl NetworkReleaseCmd {
    pub fn validate(&self) -> Result<(), String> {
        self.taps.iter().try_for_each(|t| check_ifname("tapName", t))?;
        for l in &self.leases {
            check_uuid("l3Uuid", &l.l3_uuid)?;
            l.macs.iter().try_for_each(|m| check_mac(m))?;
        }
        self.dhcp.iter().try_for_each(|u| check_uuid("l3Uuid", u))?;
        self.bridges.iter().try_for_each(|b| check_ifname("bridgeName", b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        let f = HostFacts { cpu_num: 4, memory_bytes: 8, architecture: "x86_64".into(), ..Default::default() };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["cpuNum"], 4);
        assert_eq!(v["memoryBytes"], 8);
        assert_eq!(v["cpuModelName"], "");
        assert_eq!(v["accelerator"], "");
        let c = ConnectCmd { version: 1, host_uuid: "h".into(), management_node_uuid: "m".into() };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"version": 1, "hostUuid": "h", "managementNodeUuid": "m"})
        );
        let p: PingRsp = serde_json::from_str(r#"{"version":1,"success":true}"#).unwrap();
        assert_eq!(p.host_uuid, None);
        assert_eq!(
            serde_json::to_value(ErrorRsp::new("no")).unwrap(),
            serde_json::json!({"version": 1, "success": false, "error": "no"})
        );
    }

    #[test]
    fn rsp_envelope_and_validation() {
        let r = AgentRsp::ok(Deleted { deleted: true });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"version": 1, "success": true, "error": null, "result": {"deleted": true}})
        );
        let e: AgentRsp<VolumeInfo> = serde_json::from_str(r#"{"version":1,"success":false,"error":"no"}"#).unwrap();
        assert_eq!((e.success, e.error.as_deref(), e.result), (false, Some("no"), None));

        let u = "0123456789abcdef0123456789abcdef";
        let mut v = VolumeCreateCmd {
            version: 1,
            volume_uuid: u.into(),
            install_path: "/ps/v.qcow2".into(),
            size: 0,
            backing_file: Some("/ps/b.qcow2".into()),
            provisioning: Provisioning::ThickProvisioning,
        };
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(serde_json::to_value(&v).unwrap()["provisioning"], "ThickProvisioning");
        v.backing_file = None;
        assert!(v.validate().unwrap_err().contains("positive size"));
        v.size = 1 << 20;
        v.install_path = "/ps/../etc/passwd".into();
        assert!(v.validate().unwrap_err().contains(".."));
        v.install_path = "rel.qcow2".into();
        assert!(v.validate().unwrap_err().contains("absolute"));

        assert_eq!(netmask_prefix("255.255.255.0"), Some(24));
        assert_eq!(netmask_prefix("255.0.255.0"), None);
        assert!(check_mac("fa:16:3e:00:00:01").is_ok());
        assert!(check_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
        assert!(check_ifname("t", "a-very-long-interface").is_err());
        let b =
            BridgeSpec { l2_uuid: u.into(), physical_interface: "rztest0".into(), vlan: Some(10), bridge_name: None };
        assert_eq!((b.name(), b.validate()), ("br_rztest0_10".to_string(), Ok(())));
        let s: VmStopCmd = serde_json::from_str(&format!(r#"{{"version":1,"vmUuid":"{u}","mode":"cold"}}"#)).unwrap();
        assert_eq!((s.mode, s.grace_secs()), (StopMode::Cold, 0));
    }
}
