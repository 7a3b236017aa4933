//! VMs: one daemonized QEMU per VM, controlled over its QMP socket, with a state file per VM
//! so a restarted agent re-adopts the guests that kept running.
//!
//! Layout: `<data-dir>/vms/<uuid>/` holds `state.json` (the start command, the pid, how the
//! last stop ended), `qmp.sock`, `qemu.pid`, `qemu.log` (QEMU's own messages), `serial.log`
//! (the guest's serial console, appended across boots) and, with a TPM, `tpm/`, `swtpm.sock`,
//! `swtpm.pid`. QEMU runs with `-daemonize`, so it outlives the agent; the agent opens a QMP
//! connection per operation (QEMU serves one client at a time) and tells a live QEMU by its
//! pid file plus `/proc/<pid>` (not a zombie, command line naming this VM's directory).

use crate::qmp::Qmp;
use crate::sys::{self, KeyLocks};
use rzstack_api::agent::{
    VmCdromCmd, VmConsole, VmConsoleCmd, VmDestroyCmd, VmDisk, VmStartCmd, VmState, VmStatusCmd, VmStatusList,
    VmStopCmd, VmVolumeCmd, VolumeInfo, ACCEL_KVM, VM_PAUSED, VM_RUNNING, VM_STOPPED, VM_UNKNOWN,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after `quit` before it is killed.
const QUIT_WAIT: Duration = Duration::from_secs(10);
/// unix socket paths are at most 107 bytes.
const MAX_SOCKET_PATH: usize = 107;
/// Empty PCIe root ports a VM with virtio devices gets for hot-plugged data volumes.
const HOTPLUG_PORTS: usize = 6;

/// The `bootindex` of each bootable device, from a start command's boot order: the devices
/// in the order's order (Network: each start-time NIC, by device id; QEMU's iPXE option ROM
/// boots it); the root disk and the CD-ROM after them when the order does not name them (as
/// fallbacks, as before boot orders were honoured); NICs only when the order names Network.
struct BootIndices {
    disk: usize,
    cdrom: usize,
    /// the index of the first NIC, when the order names Network
    nics: Option<usize>,
}

impl BootIndices {
    fn of(order: &[String], nics: usize) -> BootIndices {
        let (mut disk, mut cdrom, mut first_nic) = (None, None, None);
        let mut next = 1;
        for d in order {
            match d.as_str() {
                "HardDisk" if disk.is_none() => disk = Some(next),
                "CdRom" if cdrom.is_none() => cdrom = Some(next),
                "Network" if first_nic.is_none() && nics > 0 => {
                    first_nic = Some(next);
                    next += nics - 1;
                }
                _ => continue,
            }
            next += 1;
        }
        let disk = disk.unwrap_or_else(|| {
            next += 1;
            next - 1
        });
        let cdrom = cdrom.unwrap_or(next);
        BootIndices { disk, cdrom, nics: first_nic }
    }

    /// `,bootindex=N` for the NIC at position `i` (by device id), or nothing.
    fn nic(&self, i: usize) -> String {
        self.nics.map(|n| format!(",bootindex={}", n + i)).unwrap_or_default()
    }
}

/// The root port of the `i`-th NIC (by device id) QEMU starts with: `hp<HOTPLUG_PORTS + i>`.
fn nic_port(i: usize) -> usize {
    HOTPLUG_PORTS + i
}
/// The VNC display: on every address of the host (as upstream's agent has libvirt do), the
/// first free display from :0 (port 5900) up to this one; `query-vnc` tells which QEMU took.
const VNC_LAST_DISPLAY: u32 = 1000;
/// The file (in the VM's directory, mode 0600) holding its VNC password, and the id of the
/// QEMU secret object reading it.
const VNC_SECRET_FILE: &str = "vncpw";
const VNC_SECRET_ID: &str = "vncpw0";

/// The `-vnc` options of a VM's console password: VNC authentication with the password's secret,
/// or, for an empty password, VNC authentication with no password set (QEMU lets nobody in).
fn vnc_auth(cmd: &VmStartCmd) -> String {
    match cmd.console_password.as_deref() {
        None => String::new(),
        Some("") => ",password=on".into(),
        Some(_) => format!(",password-secret={VNC_SECRET_ID}"),
    }
}

/// Write `data` to `path` readable by the owner only (replaced atomically).
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The qdev id of a VM's CD-ROM drive.
const CDROM_ID: &str = "cdrom0";
/// How long the guest may take to release a hot-unplugged disk.
const UNPLUG_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    cmd: VmStartCmd,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    swtpm_pid: Option<u32>,
    #[serde(default)]
    stopped_by: Option<String>,
    /// The root ports `hp<i>` the running QEMU has (the free ones plus one per virtio NIC it
    /// started with); 0 in records of older agents (then [`HOTPLUG_PORTS`]).
    #[serde(default)]
    ports: usize,
}

pub struct Vms {
    dir: PathBuf,
    accel: &'static str,
    qemu_binary: String,
    locks: KeyLocks,
}

/// `0123...` (32 hex) → `01234567-89ab-...` for `-uuid`.
fn dashed(u: &str) -> Option<String> {
    let h: String = u.chars().filter(|c| *c != '-').collect();
    (h.len() == 32).then(|| format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

fn tail(path: &Path) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl Vms {
    pub fn new(data_dir: &Path, accel: &'static str) -> Self {
        Vms { dir: data_dir.join("vms"), accel, qemu_binary: crate::facts::qemu_binary(), locks: KeyLocks::default() }
    }

    fn vm_dir(&self, uuid: &str) -> PathBuf {
        self.dir.join(uuid)
    }

    fn marker(&self, uuid: &str) -> String {
        self.vm_dir(uuid).to_string_lossy().into_owned()
    }

    fn load(&self, uuid: &str) -> Option<Record> {
        let t = std::fs::read_to_string(self.vm_dir(uuid).join("state.json")).ok()?;
        serde_json::from_str(&t).ok()
    }

    fn save(&self, uuid: &str, r: &Record) -> Result<(), String> {
        let data = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        sys::write_atomic(&self.vm_dir(uuid).join("state.json"), &data)
    }

    fn live_pid(&self, uuid: &str, r: &Record) -> Option<u32> {
        r.pid.filter(|p| sys::alive(*p, &self.marker(uuid)))
    }

    async fn qmp(&self, uuid: &str) -> Result<Qmp, String> {
        let sock = self.vm_dir(uuid).join("qmp.sock");
        match tokio::time::timeout(QMP_TIMEOUT, Qmp::connect(&sock)).await {
            Ok(Ok(q)) => Ok(q),
            Ok(Err(e)) => Err(format!("VM {uuid}: {e}")),
            Err(_) => Err(format!("VM {uuid}: no QMP answer in {QMP_TIMEOUT:?}")),
        }
    }

    async fn state_of(&self, uuid: &str) -> VmState {
        let serial = self.vm_dir(uuid).join("serial.log");
        let Some(r) = self.load(uuid) else {
            return VmState {
                vm_uuid: uuid.to_string(),
                state: VM_UNKNOWN.into(),
                pid: None,
                qmp_status: None,
                serial_log: None,
                stopped_by: None,
            };
        };
        let mut s = VmState {
            vm_uuid: uuid.to_string(),
            state: VM_STOPPED.into(),
            pid: None,
            qmp_status: None,
            serial_log: Some(serial.to_string_lossy().into_owned()),
            stopped_by: r.stopped_by.clone(),
        };
        if let Some(pid) = self.live_pid(uuid, &r) {
            s.pid = Some(pid);
            s.stopped_by = None;
            let status = match self.qmp(uuid).await {
                Ok(mut q) => match tokio::time::timeout(QMP_TIMEOUT, q.query_status()).await {
                    Ok(Ok((st, _))) => Some(st),
                    _ => None,
                },
                Err(_) => None,
            };
            s.state = match status.as_deref() {
                Some("paused") | Some("suspended") | Some("prelaunch") | Some("inmigrate") => VM_PAUSED.into(),
                _ => VM_RUNNING.into(),
            };
            s.qmp_status = status;
        }
        s
    }

    /// The QEMU command line for a VM (without the binary).
    pub fn qemu_args(&self, cmd: &VmStartCmd, dir: &Path) -> Vec<String> {
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("guest={},debug-threads=on", cmd.vm_uuid),
            "-machine".into(),
            format!("q35,accel={}", self.accel),
        ];
        if let Some(u) = dashed(&cmd.vm_uuid) {
            a.extend(["-uuid".into(), u]);
        }
        if self.accel == ACCEL_KVM {
            a.extend(["-cpu".into(), "host".into()]);
        }
        a.extend([
            "-m".into(),
            (cmd.memory_size >> 20).to_string(),
            "-smp".into(),
            cmd.cpu_num.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-vnc".into(),
            format!("0.0.0.0:0,to={VNC_LAST_DISPLAY}{}", vnc_auth(cmd)),
            "-rtc".into(),
            "base=utc".into(),
            "-chardev".into(),
            format!("file,id=serial0,path={},append=on", p("serial.log")),
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p("qmp.sock")),
            "-pidfile".into(),
            p("qemu.pid"),
            "-daemonize".into(),
        ]);
        let boot = BootIndices::of(&cmd.boot_order, cmd.nics.len());
        let (disk_boot, cd_boot) = (boot.disk, boot.cdrom);
        let mut ahci_port = 0;
        let mut disks: Vec<_> = std::iter::once(&cmd.root_volume).chain(&cmd.data_volumes).collect();
        disks.sort_by_key(|d| d.device_id);
        for d in disks {
            let node = format!("disk{}", d.device_id);
            a.push("-blockdev".into());
            a.push(
                json!({"driver": "qcow2", "node-name": node,
                       "file": {"driver": "file", "filename": d.install_path}})
                .to_string(),
            );
            let boot = if d.device_id == 0 { format!(",bootindex={disk_boot}") } else { String::new() };
            a.push("-device".into());
            if cmd.virtio {
                a.push(format!("virtio-blk-pci,drive={node},id=vd{}{boot}", d.device_id));
            } else {
                a.push(format!("ide-hd,drive={node},bus=ide.{ahci_port},id=hd{}{boot}", d.device_id));
                ahci_port += 1;
            }
        }
        if cmd.virtio {
            // PCIe root ports left empty for data volumes hot-plugged later (the root bus of q35
            // takes no hot-plugged devices)
            for i in 0..HOTPLUG_PORTS {
                a.push("-device".into());
                a.push(format!("pcie-root-port,id=hp{i},bus=pcie.0,chassis={}", i + 1));
            }
        }
        if let Some(iso) = &cmd.cdrom {
            a.push("-blockdev".into());
            a.push(
                json!({"driver": "raw", "node-name": "cd0", "read-only": true,
                       "file": {"driver": "file", "filename": iso, "read-only": true}})
                .to_string(),
            );
            a.push("-device".into());
            a.push(format!("ide-cd,drive=cd0,bus=ide.{ahci_port},id={CDROM_ID},bootindex={cd_boot}"));
        } else if cmd.cdrom_drive {
            // an empty drive: its medium is changed over QMP while the VM runs
            a.push("-device".into());
            a.push(format!("ide-cd,bus=ide.{ahci_port},id={CDROM_ID},bootindex={cd_boot}"));
        }
        let mut nics: Vec<_> = cmd.nics.iter().collect();
        nics.sort_by_key(|n| n.device_id);
        for (i, n) in nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap_name));
            let mac = n.mac.to_ascii_lowercase();
            a.push("-device".into());
            if cmd.virtio {
                // each NIC on a root port of its own (`hp<6+i>`, after the free ones), so that it
                // can be unplugged like a hot-plugged one; the ports take the root-bus slots the
                // NICs had, in the same order (the guest enumerates and names them as before)
                let port = nic_port(i);
                a.push(format!("pcie-root-port,id=hp{port},bus=pcie.0,chassis={}", port + 1));
                a.push("-device".into());
                a.push(format!("virtio-net-pci,netdev=net{i},mac={mac},id=nic{i},bus=hp{port}{}", boot.nic(i)));
            } else {
                // no virtio: an e1000 on the root bus (not hot-unpluggable)
                a.push(format!("e1000,netdev=net{i},mac={mac},id=nic{i}{}", boot.nic(i)));
            }
        }
        if cmd.console_password.as_ref().is_some_and(|pw| !pw.is_empty()) {
            a.extend(["-object".into(), format!("secret,id={VNC_SECRET_ID},file={},format=raw", p(VNC_SECRET_FILE))]);
        }
        if cmd.user_data.is_some() {
            a.extend(["-fw_cfg".into(), format!("name=opt/rzstack/userdata,file={}", p("userdata"))]);
        }
        if cmd.tpm {
            a.extend([
                "-chardev".into(),
                format!("socket,id=chrtpm,path={}", p("swtpm.sock")),
                "-tpmdev".into(),
                "emulator,id=tpm0,chardev=chrtpm".into(),
                "-device".into(),
                "tpm-crb,tpmdev=tpm0".into(),
            ]);
        }
        // the console's display adapter, last: the root-bus slots of the devices before it (and
        // so the guest's names for its NICs) stay as they were
        a.extend(["-device".into(), "VGA,id=video0".into()]);
        a
    }

    async fn start_swtpm(&self, dir: &Path) -> Result<u32, String> {
        let state = dir.join("tpm");
        sys::mkdirs(&state)?;
        let sock = dir.join("swtpm.sock");
        let pidf = dir.join("swtpm.pid");
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pidf);
        let s = |p: &Path| p.to_string_lossy().into_owned();
        sys::run(
            "swtpm",
            &[
                "socket".to_string(),
                "--tpm2".into(),
                "--tpmstate".into(),
                format!("dir={}", s(&state)),
                "--ctrl".into(),
                format!("type=unixio,path={}", s(&sock)),
                "--pid".into(),
                format!("file={}", s(&pidf)),
                "--log".into(),
                format!("file={}", s(&dir.join("swtpm.log"))),
                "--terminate".into(),
                "--daemon".into(),
            ],
        )
        .await
        .map_err(|e| format!("cannot start the TPM emulator: {e}"))?;
        for _ in 0..100 {
            if sock.exists() {
                if let Some(pid) = sys::read_pid(&pidf) {
                    return Ok(pid);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("swtpm did not open {}", sock.display()))
    }

    pub async fn start(&self, cmd: &VmStartCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        self.start_locked(cmd).await
    }

    async fn start_locked(&self, cmd: &VmStartCmd) -> Result<VmState, String> {
        let uuid = cmd.vm_uuid.as_str();
        if let Some(r) = self.load(uuid) {
            if self.live_pid(uuid, &r).is_some() {
                return Ok(self.state_of(uuid).await);
            }
        }
        for d in std::iter::once(&cmd.root_volume).chain(&cmd.data_volumes) {
            if !Path::new(&d.install_path).is_file() {
                return Err(format!("the volume {} does not exist on this host", d.install_path));
            }
        }
        for n in &cmd.nics {
            // QEMU (as root) would make a missing tap itself, on no bridge.
            if !Path::new("/sys/class/net").join(&n.tap_name).join("tun_flags").exists() {
                return Err(format!("the tap {} does not exist on this host (network/prepare makes it)", n.tap_name));
            }
        }
        if let Some(c) = &cmd.cdrom {
            if !Path::new(c).is_file() {
                return Err(format!("the ISO {c} does not exist on this host"));
            }
        }
        let dir = self.vm_dir(uuid);
        let sock = dir.join("swtpm.sock");
        if sock.as_os_str().len() > MAX_SOCKET_PATH || dir.join("qmp.sock").as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!("the data directory path is too long for unix sockets: {}", dir.display()));
        }
        if dir.to_string_lossy().contains(',') {
            return Err(format!("the data directory path must not contain ',': {}", dir.display()));
        }
        sys::mkdirs(&dir)?;
        match &cmd.user_data {
            Some(u) => sys::write_atomic(&dir.join("userdata"), u.as_bytes())?,
            None => {
                let _ = std::fs::remove_file(dir.join("userdata"));
            }
        }
        match cmd.console_password.as_deref().filter(|pw| !pw.is_empty()) {
            Some(pw) => write_private(&dir.join(VNC_SECRET_FILE), pw.as_bytes())?,
            None => {
                let _ = std::fs::remove_file(dir.join(VNC_SECRET_FILE));
            }
        }
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        let ports = if cmd.virtio { nic_port(cmd.nics.len()) } else { 0 };
        let mut rec = Record { cmd: cmd.clone(), pid: None, swtpm_pid: None, stopped_by: None, ports };
        self.save(uuid, &rec)?;
        if cmd.tpm {
            rec.swtpm_pid = Some(self.start_swtpm(&dir).await?);
            self.save(uuid, &rec)?;
        }
        let log_path = dir.join("qemu.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // With -daemonize the command returns once QEMU is set up (its QMP socket listening).
        let status = tokio::process::Command::new(&self.qemu_binary)
            .args(self.qemu_args(cmd, &dir))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .await
            .map_err(|e| format!("cannot start {}: {e}", self.qemu_binary))?;
        let pid = sys::read_pid(&dir.join("qemu.pid"));
        if !status.success() || pid.is_none() {
            self.stop_swtpm(uuid, &mut rec).await;
            return Err(format!("QEMU did not start ({status}): {}", tail(&log_path)));
        }
        rec.pid = pid;
        self.save(uuid, &rec)?;
        tracing::info!(vm = uuid, pid, "VM started");
        Ok(self.state_of(uuid).await)
    }

    async fn stop_swtpm(&self, uuid: &str, rec: &mut Record) {
        if let Some(p) = rec.swtpm_pid.take() {
            sys::terminate(p, &self.marker(uuid), Duration::from_secs(3)).await;
        }
    }

    /// Stop; `grace` zero = at once. Ok(None) when it was not running.
    async fn stop_locked(&self, uuid: &str, grace: Duration) -> Result<Option<&'static str>, String> {
        let Some(mut rec) = self.load(uuid) else { return Ok(None) };
        let marker = self.marker(uuid);
        let Some(pid) = self.live_pid(uuid, &rec) else {
            self.stop_swtpm(uuid, &mut rec).await;
            if rec.pid.take().is_some() {
                rec.stopped_by.get_or_insert_with(|| "exited".into());
            }
            self.save(uuid, &rec)?;
            return Ok(None);
        };
        let mut how = "forced";
        if !grace.is_zero() {
            match self.qmp(uuid).await {
                Ok(mut q) => {
                    if let Err(e) = q.execute("system_powerdown", None).await {
                        tracing::warn!(vm = uuid, error = %e, "system_powerdown failed");
                    }
                }
                Err(e) => tracing::warn!(vm = uuid, error = %e, "no QMP for the ACPI power-down"),
            }
            if sys::wait_gone(pid, &marker, grace).await {
                how = "graceful";
            }
        }
        if how == "forced" {
            if let Ok(mut q) = self.qmp(uuid).await {
                let _ = tokio::time::timeout(QMP_TIMEOUT, q.execute("quit", None)).await;
            }
            if !sys::wait_gone(pid, &marker, QUIT_WAIT).await {
                tracing::warn!(vm = uuid, pid, "QEMU did not quit; killing it");
                let _ = sys::signal(pid, "-KILL").await;
                if !sys::wait_gone(pid, &marker, QUIT_WAIT).await {
                    return Err(format!("QEMU (pid {pid}) of VM {uuid} does not die"));
                }
            }
        }
        self.stop_swtpm(uuid, &mut rec).await;
        rec.pid = None;
        rec.stopped_by = Some(how.into());
        self.save(uuid, &rec)?;
        tracing::info!(vm = uuid, how, "VM stopped");
        Ok(Some(how))
    }

    pub async fn stop(&self, cmd: &VmStopCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let _g = self.locks.lock(&cmd.vm_uuid).await;
        self.stop_locked(&cmd.vm_uuid, Duration::from_secs(cmd.grace_secs())).await?;
        Ok(self.state_of(&cmd.vm_uuid).await)
    }

    /// Stop (as asked) and start again with the VM's last start command.
    pub async fn reboot(&self, cmd: &VmStopCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let _g = self.locks.lock(&cmd.vm_uuid).await;
        let mut rec =
            self.load(&cmd.vm_uuid).ok_or_else(|| format!("VM {} was never started on this host", cmd.vm_uuid))?;
        if let Some(order) = &cmd.boot_order {
            // the order as it is now; an empty drive boots nothing (a start refuses CdRom then)
            rec.cmd.boot_order = order.clone();
            if rec.cmd.cdrom.is_none() {
                rec.cmd.boot_order.retain(|b| b != "CdRom");
            }
            rec.cmd.validate()?;
        }
        self.stop_locked(&cmd.vm_uuid, Duration::from_secs(cmd.grace_secs())).await?;
        self.start_locked(&rec.cmd).await
    }

    pub async fn destroy(&self, cmd: &VmDestroyCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let _g = self.locks.lock(&cmd.vm_uuid).await;
        self.stop_locked(&cmd.vm_uuid, Duration::ZERO).await?;
        let dir = self.vm_dir(&cmd.vm_uuid);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove {}: {e}", dir.display()))
            }
            _ => {}
        }
        Ok(self.state_of(&cmd.vm_uuid).await)
    }

    pub async fn status(&self, cmd: &VmStatusCmd) -> Result<VmStatusList, String> {
        cmd.validate()?;
        let uuids = if cmd.vm_uuids.is_empty() { self.known() } else { cmd.vm_uuids.clone() };
        let mut vms = Vec::with_capacity(uuids.len());
        for u in uuids {
            vms.push(self.state_of(&u).await);
        }
        Ok(VmStatusList { vms })
    }

    /// Hot-plug a data volume into a running VM: `blockdev-add` (node `disk<deviceId>`) then
    /// `device_add` of a virtio-blk-pci `vd<deviceId>` on a free hot-plug port; the recorded
    /// start command gets the disk. Already there: success.
    pub async fn attach_volume(&self, cmd: &VmVolumeCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let mut rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        if self.live_pid(uuid, &rec).is_none() {
            return Err(format!("VM {uuid} is not running on this host"));
        }
        let d = &cmd.volume;
        if rec.cmd.data_volumes.iter().any(|v| v.device_id == d.device_id && v.volume_uuid == d.volume_uuid) {
            return Ok(self.state_of(uuid).await);
        }
        if let Some(v) = std::iter::once(&rec.cmd.root_volume)
            .chain(&rec.cmd.data_volumes)
            .find(|v| v.device_id == d.device_id || v.install_path == d.install_path)
        {
            return Err(format!(
                "VM {uuid} already has the disk {} ({}) as device {}",
                v.volume_uuid, v.install_path, v.device_id
            ));
        }
        if !rec.cmd.virtio {
            return Err(format!("VM {uuid} has no virtio devices: its disks cannot be hot-plugged"));
        }
        if !Path::new(&d.install_path).is_file() {
            return Err(format!("the volume {} does not exist on this host", d.install_path));
        }
        let node = format!("disk{}", d.device_id);
        let id = format!("vd{}", d.device_id);
        let mut q = self.qmp(uuid).await?;
        let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
        q.execute(
            "blockdev-add",
            Some(json!({"driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": d.install_path}})),
        )
        .await
        .map_err(e)?;
        let args = json!({"driver": "virtio-blk-pci", "drive": node, "id": id});
        if let Some(why) = plug(&mut q, uuid, rec.ports, args).await? {
            let _ = q.execute("blockdev-del", Some(json!({"node-name": node}))).await;
            return Err(format!("VM {uuid}: cannot hot-plug {}: {why}", d.install_path));
        }
        rec.cmd.data_volumes.push(VmDisk { ..d.clone() });
        self.save(uuid, &rec)?;
        drop(q);
        Ok(self.state_of(uuid).await)
    }

    /// Hot-unplug a data volume: `device_del` of `vd<deviceId>`, wait for QEMU's
    /// DEVICE_DELETED (the guest let it go), then `blockdev-del`; the recorded start command
    /// loses the disk. Not there: success.
    pub async fn detach_volume(&self, cmd: &VmVolumeCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let mut rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        let d = &cmd.volume;
        let Some(pos) = rec.cmd.data_volumes.iter().position(|v| v.volume_uuid == d.volume_uuid) else {
            return Ok(self.state_of(uuid).await);
        };
        let dev = rec.cmd.data_volumes[pos].device_id;
        if self.live_pid(uuid, &rec).is_some() {
            let (node, id) = (format!("disk{dev}"), format!("vd{dev}"));
            let mut q = self.qmp(uuid).await?;
            let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
            unplug(&mut q, uuid, &id, "disk").await?;
            match q.execute("blockdev-del", Some(json!({"node-name": node}))).await {
                Ok(_) => {}
                Err(crate::qmp::QmpError::Command { desc, .. }) if desc.contains("not found") => {}
                Err(err) => return Err(e(err)),
            }
        }
        rec.cmd.data_volumes.remove(pos);
        self.save(uuid, &rec)?;
        Ok(self.state_of(uuid).await)
    }

    /// Hot-plug a NIC: `netdev_add` of its tap (made by network/prepare), `device_add` of a
    /// virtio-net device `hnic<deviceId>` on a free hot-plug port; the recorded start command
    /// gains the NIC. Already there (same MAC and device id): success.
    pub async fn attach_nic(&self, cmd: &rzstack_api::agent::VmNicCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let mut rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        if self.live_pid(uuid, &rec).is_none() {
            return Err(format!("VM {uuid} is not running on this host"));
        }
        let n = &cmd.nic;
        if rec.cmd.nics.iter().any(|x| x.device_id == n.device_id && x.mac.eq_ignore_ascii_case(&n.mac)) {
            return Ok(self.state_of(uuid).await);
        }
        if let Some(x) = rec.cmd.nics.iter().find(|x| x.device_id == n.device_id || x.mac.eq_ignore_ascii_case(&n.mac))
        {
            return Err(format!("VM {uuid} already has the NIC {} as device {}", x.mac, x.device_id));
        }
        if !rec.cmd.virtio {
            return Err(format!("VM {uuid} has no virtio devices: its NICs cannot be hot-plugged"));
        }
        let (netdev, id) = (format!("hnet{}", n.device_id), format!("hnic{}", n.device_id));
        let mut q = self.qmp(uuid).await?;
        let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
        q.execute(
            "netdev_add",
            Some(json!({"type": "tap", "id": netdev, "ifname": n.tap_name, "script": "no", "downscript": "no"})),
        )
        .await
        .map_err(e)?;
        let args = json!({"driver": "virtio-net-pci", "netdev": netdev, "id": id, "mac": n.mac.to_ascii_lowercase()});
        if let Some(why) = plug(&mut q, uuid, rec.ports, args).await? {
            let _ = q.execute("netdev_del", Some(json!({"id": netdev}))).await;
            return Err(format!("VM {uuid}: cannot hot-plug the NIC {}: {why}", n.mac));
        }
        rec.cmd.nics.push(n.clone());
        self.save(uuid, &rec)?;
        drop(q);
        Ok(self.state_of(uuid).await)
    }

    /// Hot-unplug a NIC, found by its MAC among QEMU's NICs (`query-rx-filter`), hot-plugged or
    /// started with (on its own root port): `device_del`, wait for DEVICE_DELETED (the guest
    /// let it go), then `netdev_del` of its backend; the recorded start command loses the NIC.
    /// Not there: success. A NIC on the root bus (an e1000 of a VM without virtio, or a NIC of
    /// a VM started by an older agent) is refused.
    pub async fn detach_nic(&self, cmd: &rzstack_api::agent::VmNicCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let mut rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        let mac = cmd.nic.mac.to_ascii_lowercase();
        let pos = rec.cmd.nics.iter().position(|x| x.mac.eq_ignore_ascii_case(&mac));
        if self.live_pid(uuid, &rec).is_some() {
            if !rec.cmd.virtio && pos.is_some() {
                // e1000 NICs (QEMU lists no rx-filter for them) sit on the root bus
                return Err(format!(
                    "VM {uuid}: the NIC {mac} is an e1000 device (the VM has no virtio devices) on the PCI root bus, which cannot be hot-unplugged; stop the VM first"
                ));
            }
            let mut q = self.qmp(uuid).await?;
            let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
            let filters = q.execute("query-rx-filter", None).await.map_err(e)?;
            let id = filters
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["main-mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&mac)))
                .and_then(|f| f["name"].as_str())
                .map(String::from);
            if let Some(id) = id {
                // a NIC of the start sits on a root port of its own only when this agent
                // version started the VM; an older one put it on the root bus (no unplug there)
                if id.starts_with("nic") && rec.ports == 0 {
                    return Err(format!(
                        "VM {uuid}: the NIC {mac} was started by an older agent on the PCI root bus, which cannot be hot-unplugged; stop the VM first"
                    ));
                }
                // the backend: `net<i>` for a NIC `nic<i>` of the start, `hnet<d>` for `hnic<d>`
                let netdev = match id.strip_prefix("hnic") {
                    Some(d) => format!("hnet{d}"),
                    None => format!("net{}", id.strip_prefix("nic").unwrap_or(&id)),
                };
                unplug(&mut q, uuid, &id, "NIC").await?;
                match q.execute("netdev_del", Some(json!({"id": netdev}))).await {
                    Ok(_) => {}
                    Err(crate::qmp::QmpError::Command { desc, .. }) if desc.contains("not found") => {}
                    Err(err) => return Err(e(err)),
                }
            }
        }
        if let Some(pos) = pos {
            rec.cmd.nics.remove(pos);
            self.save(uuid, &rec)?;
        }
        Ok(self.state_of(uuid).await)
    }

    /// Change the medium of a running VM's CD-ROM drive: the tray forced open (a guest may
    /// have locked it), the old medium removed, the ISO inserted read-only
    /// (`blockdev-change-medium`, which also closes the tray) or, to eject, the tray closed
    /// again empty. The recorded start command follows (a reboot keeps the medium). The same
    /// medium again: success.
    pub async fn change_cdrom(&self, cmd: &VmCdromCmd) -> Result<VmState, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let mut rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        if self.live_pid(uuid, &rec).is_none() {
            return Err(format!("VM {uuid} is not running on this host"));
        }
        if !rec.cmd.cdrom_drive && rec.cmd.cdrom.is_none() {
            return Err(format!("VM {uuid} has no CD-ROM drive (it was started without one)"));
        }
        if rec.cmd.cdrom == cmd.iso {
            return Ok(self.state_of(uuid).await);
        }
        if let Some(iso) = &cmd.iso {
            if !Path::new(iso).is_file() {
                return Err(format!("the ISO {iso} does not exist on this host"));
            }
        }
        let mut q = self.qmp(uuid).await?;
        let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
        q.execute("blockdev-open-tray", Some(json!({"id": CDROM_ID, "force": true}))).await.map_err(e)?;
        q.execute("blockdev-remove-medium", Some(json!({"id": CDROM_ID}))).await.map_err(e)?;
        // the node of an ISO QEMU started with is the monitor's: it goes once out of the drive
        if rec.cmd.cdrom.is_some() {
            let _ = q.execute("blockdev-del", Some(json!({"node-name": "cd0"}))).await;
        }
        match &cmd.iso {
            Some(iso) => {
                let args = json!({"id": CDROM_ID, "filename": iso, "format": "raw", "read-only-mode": "read-only"});
                q.execute("blockdev-change-medium", Some(args)).await.map_err(e)?;
            }
            None => {
                q.execute("blockdev-close-tray", Some(json!({"id": CDROM_ID}))).await.map_err(e)?;
            }
        }
        drop(q);
        rec.cmd.cdrom_drive = true;
        rec.cmd.cdrom = cmd.iso.clone();
        if rec.cmd.cdrom.is_none() {
            rec.cmd.boot_order.retain(|b| b != "CdRom");
        }
        self.save(uuid, &rec)?;
        Ok(self.state_of(uuid).await)
    }

    /// The VNC port QEMU bound for a running VM (`query-vnc`).
    pub async fn console(&self, cmd: &VmConsoleCmd) -> Result<VmConsole, String> {
        cmd.validate()?;
        let uuid = cmd.vm_uuid.as_str();
        let _g = self.locks.lock(uuid).await;
        let rec = self.load(uuid).ok_or_else(|| format!("VM {uuid} is not known on this host"))?;
        if self.live_pid(uuid, &rec).is_none() {
            return Err(format!("VM {uuid} is not running on this host"));
        }
        let mut q = self.qmp(uuid).await?;
        let vnc = q.execute("query-vnc", None).await.map_err(|e| format!("VM {uuid}: {e}"))?;
        if vnc["enabled"] != true {
            return Err(format!("VM {uuid} has no VNC display (it was started without one)"));
        }
        let port = vnc["service"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| format!("VM {uuid}: QEMU reports no VNC port: {vnc}"))?;
        Ok(VmConsole { vm_uuid: uuid.to_string(), protocol: "vnc".into(), port })
    }

    /// Grow a disk of a running VM through QEMU (`block_resize` of its node `disk<deviceId>`):
    /// the guest sees the new size. `Ok(false)` when the VM is not running (the caller resizes
    /// the file itself).
    pub async fn resize_disk(&self, uuid: &str, path: &str, size: i64) -> Result<bool, String> {
        let _g = self.locks.lock(uuid).await;
        let Some(rec) = self.load(uuid) else { return Ok(false) };
        if self.live_pid(uuid, &rec).is_none() {
            return Ok(false);
        }
        let disk = std::iter::once(&rec.cmd.root_volume)
            .chain(&rec.cmd.data_volumes)
            .find(|d| d.install_path == path)
            .ok_or_else(|| format!("{path} is not a disk of VM {uuid}"))?;
        let mut q = self.qmp(uuid).await?;
        let args = json!({"node-name": format!("disk{}", disk.device_id), "size": size});
        q.execute("block_resize", Some(args)).await.map_err(|e| format!("VM {uuid}: {e}"))?;
        Ok(true)
    }

    /// Copy a disk of a running VM to `dest` through QEMU (`drive-backup`, sync=full), waiting
    /// for the job. `Ok(None)` when the VM is not running (the caller copies the file itself).
    pub async fn backup_disk(&self, uuid: &str, src: &str, dest: &str) -> Result<Option<VolumeInfo>, String> {
        let _g = self.locks.lock(uuid).await;
        let Some(rec) = self.load(uuid) else { return Ok(None) };
        if self.live_pid(uuid, &rec).is_none() {
            return Ok(None);
        }
        let disk = std::iter::once(&rec.cmd.root_volume)
            .chain(&rec.cmd.data_volumes)
            .find(|d| d.install_path == src)
            .ok_or_else(|| format!("{src} is not a disk of VM {uuid}"))?;
        let dest_path = Path::new(dest);
        if dest_path.exists() {
            return crate::storage::Storage::volume_info(dest_path).await.map(Some);
        }
        if let Some(parent) = dest_path.parent() {
            sys::mkdirs(parent)?;
        }
        let tmp = format!("{dest}.creating");
        let _ = std::fs::remove_file(&tmp);
        let job = format!("backup-disk{}", disk.device_id);
        let mut q = self.qmp(uuid).await?;
        let args = json!({"job-id": job, "device": format!("disk{}", disk.device_id), "target": tmp,
                          "sync": "full", "format": "qcow2", "mode": "absolute-paths"});
        q.execute("drive-backup", Some(args)).await.map_err(|e| format!("VM {uuid}: {e}"))?;
        loop {
            let jobs = q.execute("query-block-jobs", None).await.map_err(|e| format!("VM {uuid}: {e}"))?;
            let running = jobs.as_array().is_some_and(|a| a.iter().any(|j| j["device"] == job.as_str()));
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let failed = q.take_events().into_iter().find_map(|e| {
            let d = &e["data"];
            (e["event"] == "BLOCK_JOB_COMPLETED" && d["device"] == job.as_str())
                .then(|| d["error"].as_str().map(String::from))
                .flatten()
        });
        if let Some(err) = failed {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("copying {src} of VM {uuid} failed: {err}"));
        }
        std::fs::rename(&tmp, dest).map_err(|e| format!("cannot rename {tmp} to {dest}: {e}"))?;
        crate::storage::Storage::volume_info(dest_path).await.map(Some)
    }

    /// Every VM with a state file.
    pub fn known(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// At agent start: re-adopt the guests that kept running (their QMP answers), record the
    /// others as stopped. Returns the uuids of the running ones.
    pub async fn adopt(&self) -> Vec<String> {
        let mut running = Vec::new();
        for uuid in self.known() {
            let _g = self.locks.lock(&uuid).await;
            let Some(mut rec) = self.load(&uuid) else { continue };
            if self.live_pid(&uuid, &rec).is_some() {
                match self.qmp(&uuid).await {
                    Ok(q) => tracing::info!(vm = %uuid, pid = rec.pid, qemu = %q.version, "re-adopted a running VM"),
                    Err(e) => tracing::warn!(vm = %uuid, error = %e, "running VM without QMP"),
                }
                running.push(uuid);
            } else if rec.pid.is_some() {
                tracing::warn!(vm = %uuid, "VM stopped while the agent was away");
                self.stop_swtpm(&uuid, &mut rec).await;
                rec.pid = None;
                rec.stopped_by = Some("exited".into());
                let _ = self.save(&uuid, &rec);
            }
        }
        running
    }
}

/// `device_del` of a hot-plugged device, then wait (up to [`UNPLUG_WAIT`]) for the guest to let
/// it go (`DEVICE_DELETED`). A device already gone (an earlier attempt that timed out after the
/// guest let go) is success.
async fn unplug(q: &mut crate::qmp::Qmp, uuid: &str, id: &str, what: &str) -> Result<(), String> {
    let e = |e: crate::qmp::QmpError| format!("VM {uuid}: {e}");
    match q.execute("device_del", Some(json!({"id": id}))).await {
        Ok(_) => {}
        Err(crate::qmp::QmpError::Command { desc, .. }) if desc.contains("not found") => return Ok(()),
        Err(err) => return Err(e(err)),
    }
    let seen = |ev: &serde_json::Value| ev["event"] == "DEVICE_DELETED" && ev["data"]["device"] == id;
    let mut gone = q.take_events().iter().any(seen);
    let deadline = tokio::time::Instant::now() + UNPLUG_WAIT;
    while !gone {
        match tokio::time::timeout_at(deadline, q.next_event()).await {
            Ok(Ok(ev)) => gone = seen(&ev),
            Ok(Err(err)) => return Err(e(err)),
            Err(_) => return Err(format!("VM {uuid}: the guest did not release the {what} {id} in {UNPLUG_WAIT:?}")),
        }
    }
    Ok(())
}

/// `device_add` of `args` on the first free hot-plug port (`hp<i>`, `i < ports`). `Ok(None)` when
/// plugged, `Ok(Some(why))` when no port took it (each refusal is a port taken by an earlier
/// hot-plug or by a NIC of the start).
async fn plug(
    q: &mut crate::qmp::Qmp,
    uuid: &str,
    ports: usize,
    mut args: serde_json::Value,
) -> Result<Option<String>, String> {
    let mut why = String::from("no hot-plug port");
    // the free ports first, then those of start-time NICs unplugged since
    for i in 0..ports.max(HOTPLUG_PORTS) {
        args["bus"] = json!(format!("hp{i}"));
        match q.execute("device_add", Some(args.clone())).await {
            Ok(_) => return Ok(None),
            Err(err @ crate::qmp::QmpError::Command { .. }) => why = err.to_string(),
            Err(err) => return Err(format!("VM {uuid}: {err}")),
        }
    }
    Ok(Some(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rzstack_api::agent::VmNicSpec;

    fn cmd(virtio: bool) -> VmStartCmd {
        let nic = |d: i64, mac: &str| VmNicSpec { mac: mac.into(), tap_name: format!("tapx{d}"), device_id: d };
        VmStartCmd {
            version: 1,
            vm_uuid: "0123456789abcdef0123456789abcdef".into(),
            name: "t".into(),
            cpu_num: 1,
            memory_size: 256 << 20,
            virtio,
            root_volume: VmDisk { volume_uuid: "r".into(), install_path: "/r.qcow2".into(), device_id: 0 },
            data_volumes: vec![VmDisk { volume_uuid: "d".into(), install_path: "/d.qcow2".into(), device_id: 1 }],
            cdrom: None,
            cdrom_drive: false,
            // out of device-id order on purpose: the command line orders them
            nics: vec![nic(1, "FA:00:00:00:00:02"), nic(0, "fa:00:00:00:00:01")],
            boot_order: vec![],
            tpm: false,
            user_data: None,
            console_password: None,
        }
    }

    fn devices(a: &[String]) -> Vec<String> {
        a.windows(2).filter(|w| w[0] == "-device").map(|w| w[1].clone()).collect()
    }

    /// A virtio VM: the disks, the 6 free hot-plug ports, then per NIC (by device id) a root
    /// port of its own after them, the NIC on it with its MAC (lower case) and tap backend.
    #[test]
    fn virtio_nics_of_the_start_sit_on_root_ports_of_their_own() {
        let vms = Vms::new(Path::new("/tmp/rz"), "tcg");
        let a = vms.qemu_args(&cmd(true), Path::new("/tmp/rz/vms/x"));
        let mut want: Vec<String> =
            vec!["virtio-blk-pci,drive=disk0,id=vd0,bootindex=1".into(), "virtio-blk-pci,drive=disk1,id=vd1".into()];
        want.extend((0..HOTPLUG_PORTS).map(|i| format!("pcie-root-port,id=hp{i},bus=pcie.0,chassis={}", i + 1)));
        want.extend([
            "pcie-root-port,id=hp6,bus=pcie.0,chassis=7".to_string(),
            "virtio-net-pci,netdev=net0,mac=fa:00:00:00:00:01,id=nic0,bus=hp6".into(),
            "pcie-root-port,id=hp7,bus=pcie.0,chassis=8".into(),
            "virtio-net-pci,netdev=net1,mac=fa:00:00:00:00:02,id=nic1,bus=hp7".into(),
            "VGA,id=video0".into(),
        ]);
        assert_eq!(devices(&a), want);
        let netdevs: Vec<&String> = a.windows(2).filter(|w| w[0] == "-netdev").map(|w| &w[1]).collect();
        assert_eq!(
            netdevs,
            ["tap,id=net0,ifname=tapx0,script=no,downscript=no", "tap,id=net1,ifname=tapx1,script=no,downscript=no"]
        );
        // every bus named exists before its device; chassis numbers are distinct
        let chassis: Vec<&str> = want
            .iter()
            .filter_map(|d| d.split("chassis=").nth(1))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(chassis.len(), HOTPLUG_PORTS + 2);
        assert_eq!(nic_port(2), HOTPLUG_PORTS + 2);
    }

    /// Without virtio: AHCI disks, no root ports, e1000 NICs on the root bus as before.
    #[test]
    fn emulated_nics_stay_on_the_root_bus() {
        let vms = Vms::new(Path::new("/tmp/rz"), "tcg");
        let a = vms.qemu_args(&cmd(false), Path::new("/tmp/rz/vms/x"));
        let d = devices(&a);
        assert!(!d.iter().any(|x| x.starts_with("pcie-root-port")), "{d:?}");
        assert_eq!(
            d[2..],
            [
                "e1000,netdev=net0,mac=fa:00:00:00:00:01,id=nic0".to_string(),
                "e1000,netdev=net1,mac=fa:00:00:00:00:02,id=nic1".into(),
                "VGA,id=video0".into()
            ]
        );
    }

    /// Boot orders: the named devices first, in their order (Network: every start-time NIC by
    /// device id); the disk and the CD-ROM after them when not named; NICs only when named.
    #[test]
    fn boot_orders_give_boot_indices() {
        let vms = Vms::new(Path::new("/tmp/rz"), "tcg");
        let boot = |order: &[&str]| {
            let mut c = cmd(true);
            c.cdrom_drive = true;
            c.boot_order = order.iter().map(|s| s.to_string()).collect();
            let d = devices(&vms.qemu_args(&c, Path::new("/tmp/rz/vms/x")));
            let index = |prefix: &str| {
                let dev = d.iter().find(|x| x.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {d:?}"));
                dev.split(",bootindex=").nth(1).map(|n| n.parse::<u32>().unwrap())
            };
            [
                index("virtio-blk-pci,drive=disk0"),
                index("ide-cd"),
                index("virtio-net-pci,netdev=net0"),
                index("virtio-net-pci,netdev=net1"),
            ]
        };
        assert_eq!(boot(&[]), [Some(1), Some(2), None, None]);
        assert_eq!(boot(&["HardDisk", "CdRom"]), [Some(1), Some(2), None, None]);
        assert_eq!(boot(&["CdRom"]), [Some(2), Some(1), None, None]);
        assert_eq!(boot(&["HardDisk", "Network"]), [Some(1), Some(4), Some(2), Some(3)]);
        assert_eq!(boot(&["Network", "CdRom", "HardDisk"]), [Some(4), Some(3), Some(1), Some(2)]);
        let c = {
            let mut c = cmd(false);
            c.boot_order = vec!["Network".into()];
            devices(&vms.qemu_args(&c, Path::new("/tmp/rz/vms/x")))
        };
        assert!(c.contains(&"e1000,netdev=net0,mac=fa:00:00:00:00:01,id=nic0,bootindex=1".to_string()), "{c:?}");
        assert!(c.iter().any(|x| x.starts_with("ide-hd,drive=disk0") && x.ends_with("bootindex=3")), "{c:?}");
    }

    /// A console password: VNC authentication with the password's secret object; an empty one:
    /// VNC authentication without a password.
    #[test]
    fn vnc_console_password() {
        let vms = Vms::new(Path::new("/tmp/rz"), "tcg");
        let mut c = cmd(false);
        let vnc = |a: &[String]| a.windows(2).filter(|w| w[0] == "-vnc").map(|w| w[1].clone()).collect::<Vec<_>>();
        let objects =
            |a: &[String]| a.windows(2).filter(|w| w[0] == "-object").map(|w| w[1].clone()).collect::<Vec<_>>();
        c.console_password = Some("s3cret".into());
        let a = vms.qemu_args(&c, Path::new("/tmp/rz/vms/x"));
        assert_eq!(vnc(&a), [format!("0.0.0.0:0,to={VNC_LAST_DISPLAY},password-secret=vncpw0")]);
        assert_eq!(objects(&a), ["secret,id=vncpw0,file=/tmp/rz/vms/x/vncpw,format=raw"]);
        c.console_password = Some(String::new());
        let a = vms.qemu_args(&c, Path::new("/tmp/rz/vms/x"));
        assert_eq!(vnc(&a), [format!("0.0.0.0:0,to={VNC_LAST_DISPLAY},password=on")]);
        assert!(objects(&a).is_empty(), "{a:?}");
    }

    /// A VNC display on every address from :0 up; an empty CD-ROM drive (on the AHCI port after
    /// the disks) unless the VM has none; with an ISO the drive holds it.
    #[test]
    fn vnc_display_and_cdrom_drive() {
        let vms = Vms::new(Path::new("/tmp/rz"), "tcg");
        let mut c = cmd(false);
        let a = vms.qemu_args(&c, Path::new("/tmp/rz/vms/x"));
        let vnc: Vec<&String> = a.windows(2).filter(|w| w[0] == "-vnc").map(|w| &w[1]).collect();
        assert_eq!(vnc, [&format!("0.0.0.0:0,to={VNC_LAST_DISPLAY}")]);
        assert!(!devices(&a).iter().any(|d| d.starts_with("ide-cd")), "{a:?}");
        c.cdrom_drive = true;
        let d = devices(&vms.qemu_args(&c, Path::new("/tmp/rz/vms/x")));
        assert!(d.contains(&"ide-cd,bus=ide.2,id=cdrom0,bootindex=2".to_string()), "{d:?}");
        c.cdrom = Some("/i.iso".into());
        let d = devices(&vms.qemu_args(&c, Path::new("/tmp/rz/vms/x")));
        assert!(d.contains(&"ide-cd,drive=cd0,bus=ide.2,id=cdrom0,bootindex=2".to_string()), "{d:?}");
        assert_eq!(d.iter().filter(|x| x.starts_with("ide-cd")).count(), 1);
    }
}
