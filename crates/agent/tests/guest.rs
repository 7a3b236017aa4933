//! A real guest booted by the agent under TCG: the test image from scripts/make-test-image.sh
//! (built on demand into target/test-guest, cached), cached as an image, a thin root volume on
//! it, a data volume, a TPM (when swtpm is installed) and a NIC with a static DHCP lease (as
//! root). The guest's serial console must show the marker lines, the exact leased IP, the data
//! disk's size, and the ACPI power-down must end it gracefully. Skips with a reason when QEMU,
//! qemu-img or the image (no Debian package access) are unavailable.
mod common;
use common::*;
use rzstack_api::agent::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Built once per test run (the tests of this file run in parallel).
fn build_image() -> Option<PathBuf> {
    static BUILT: std::sync::Mutex<Option<Option<PathBuf>>> = std::sync::Mutex::new(None);
    let mut b = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    b.get_or_insert_with(build_image_now).clone()
}

fn build_image_now() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root");
    let out = root.join("target/test-guest");
    let o = std::process::Command::new("bash")
        .arg(root.join("scripts/make-test-image.sh"))
        .arg(&out)
        .output()
        .expect("bash");
    if !o.status.success() {
        eprintln!("SKIP guest boot: scripts/make-test-image.sh failed: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some(out.join("guest.qcow2"))
}

async fn wait_for(log: &Path, marker: &str, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.contains(marker) {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {marker} in {timeout:?}; serial log:\n{t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sh(args: &[&str]) -> bool {
    std::process::Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success())
}

struct Links(Vec<String>);
impl Drop for Links {
    fn drop(&mut self) {
        for l in self.0.iter().rev() {
            if Path::new("/sys/class/net").join(l).exists() {
                sh(&["ip", "link", "del", "dev", l]);
            }
        }
    }
}

#[tokio::test]
async fn the_test_guest_boots_gets_its_lease_and_powers_off_on_acpi() {
    if !require("guest boot", &[("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")]) {
        return;
    }
    let Some(image) = build_image() else { return };
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let (image_uuid, vm, root_uuid, data_uuid) = (uuid(), uuid(), uuid(), uuid());
    let cache: ImageCacheInfo = a.ok(PATH_IMAGE_CACHE, json!({"imageUuid": image_uuid, "sourcePath": image})).await;
    let ps = d.path().join("ps");
    let root_path = ps.join(format!("rootVolumes/acct-t/vol-{root_uuid}/{root_uuid}.qcow2"));
    let root: VolumeInfo = a
        .ok(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": root_uuid, "installPath": root_path, "size": 0, "backingFile": cache.install_path}),
        )
        .await;
    let data_path = ps.join(format!("dataVolumes/acct-t/vol-{data_uuid}/{data_uuid}.qcow2"));
    let _: VolumeInfo =
        a.ok(PATH_VOLUME_CREATE, json!({"volumeUuid": data_uuid, "installPath": data_path, "size": 48 << 20})).await;

    // A NIC with a static lease, where bridges and dnsmasq can be made (root).
    let n = std::process::id() % 1000;
    let (up, br, tap) = (format!("rzg{n}u"), format!("br_rzg{n}u"), format!("rzg{n}t"));
    let mut links = Links(vec![br.clone(), tap.clone()]);
    let mac = "fa:16:3e:77:00:01";
    let lease_ip = format!("10.253.{}.20", n % 250);
    let with_net = is_root() && require("guest DHCP", &[("dnsmasq", "dnsmasq-base")]);
    let l3 = uuid();
    if with_net {
        let peer = format!("{up}p");
        if !sh(&["ip", "link", "add", &up, "type", "dummy"]) {
            assert!(sh(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer]));
            links.0.push(peer);
        }
        links.0.push(up.clone());
        let _: NetworkPrepared = a
            .ok(
                PATH_NETWORK_PREPARE,
                json!({"bridges": [{"l2Uuid": uuid(), "physicalInterface": up}],
                       "taps": [{"vmUuid": vm, "tapName": tap, "mac": mac, "bridgeName": br}],
                       "dhcp": [{"l3Uuid": l3, "bridgeName": br, "gateway": format!("10.253.{}.1", n % 250),
                                 "netmask": "255.255.255.0", "leases": [{"mac": mac, "ip": lease_ip}]}]}),
            )
            .await;
    } else {
        eprintln!("NOTE: no NIC (needs root and dnsmasq)");
    }
    let tpm = have("swtpm", &["--version"]);
    let nics = if with_net { json!([{"mac": mac, "tapName": tap, "deviceId": 0}]) } else { json!([]) };
    let st: VmState = a
        .ok(
            PATH_VM_START,
            json!({"vmUuid": vm, "cpuNum": 1, "memorySize": 128 << 20, "tpm": tpm, "nics": nics,
                   "rootVolume": {"volumeUuid": root_uuid, "installPath": root.install_path, "deviceId": 0},
                   "dataVolumes": [{"volumeUuid": data_uuid, "installPath": data_path, "deviceId": 1}]}),
        )
        .await;
    let serial = PathBuf::from(st.serial_log.unwrap());
    // TCG boots are CPU-bound (~3 core-seconds); be generous when the machine is busy.
    let log = wait_for(&serial, "RZSTACK-GUEST-UP", Duration::from_secs(120)).await;
    assert!(log.contains("RZSTACK-GUEST-DISK vdb size=50331648"), "{log}");
    if with_net {
        let up = format!("RZSTACK-GUEST-UP ip={lease_ip}");
        assert!(log.lines().any(|l| l.trim_end() == up), "{log}");
        assert!(log.contains(&format!("mac={mac} ip={lease_ip}")), "{log}");
    }
    if tpm {
        assert!(log.contains("RZSTACK-GUEST-TPM /dev/tpm0"), "{log}");
    }

    // Grace stop: the guest answers the ACPI power button.
    let st: VmState = a.ok(PATH_VM_STOP, json!({"vmUuid": vm, "mode": "grace", "timeoutSecs": 60})).await;
    assert_eq!((st.state.as_str(), st.stopped_by.as_deref()), (VM_STOPPED, Some("graceful")));
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.contains("RZSTACK-GUEST-POWEROFF"), "{log}");

    // A snapshot of the stopped root volume, a new volume on it, a new VM booting from that
    // (CreateVmInstanceFromVolumeSnapshot's agent part).
    let snap_path = ps.join(format!("snapshots/{root_uuid}/s1.qcow2"));
    let _: VolumeInfo = a
        .ok(
            PATH_VOLUME_SNAPSHOT,
            json!({"snapshotUuid": uuid(), "volumeInstallPath": root_path, "installPath": snap_path}),
        )
        .await;
    let (vm2, root2) = (uuid(), uuid());
    let root2_path = ps.join(format!("rootVolumes/acct-t/vol-{root2}/{root2}.qcow2"));
    let _: VolumeInfo = a
        .ok(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": root2, "installPath": root2_path, "size": 0, "backingFile": snap_path}),
        )
        .await;
    let st2: VmState = a
        .ok(
            PATH_VM_START,
            json!({"vmUuid": vm2, "cpuNum": 1, "memorySize": 128 << 20,
                   "rootVolume": {"volumeUuid": root2, "installPath": root2_path, "deviceId": 0}}),
        )
        .await;
    let log2 = wait_for(Path::new(&st2.serial_log.unwrap()), "RZSTACK-GUEST-UP", Duration::from_secs(120)).await;
    assert!(log2.contains("RZSTACK-GUEST-DISK vda size=34603008"), "{log2}");
    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm2})).await;

    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm})).await;
    if with_net {
        let _: Deleted = a.ok(PATH_NETWORK_RELEASE, json!({"taps": [tap], "dhcp": [l3], "bridges": [br]})).await;
    }
    for p in [&root_path, &data_path, &root2_path, &snap_path] {
        let r: Deleted = a.ok(PATH_VOLUME_DELETE, json!({"installPath": p})).await;
        assert!(r.deleted);
    }
    a.shutdown().await;
}

#[tokio::test]
async fn two_guests_on_one_l3_ping_each_other() {
    if !is_root() {
        eprintln!("SKIP two guests: needs root (bridge, taps, dnsmasq)");
        return;
    }
    let tools = [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"), ("dnsmasq", "dnsmasq-base")];
    if !require("two guests", &tools) {
        return;
    }
    let Some(image) = build_image() else { return };
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let n = std::process::id() % 1000;
    let (up, br) = (format!("rzh{n}u"), format!("br_rzh{n}u"));
    let taps = [format!("rzh{n}a"), format!("rzh{n}b")];
    let mut links = Links(vec![br.clone(), taps[0].clone(), taps[1].clone()]);
    let peer = format!("{up}p");
    if !sh(&["ip", "link", "add", &up, "type", "dummy"]) {
        assert!(sh(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer]));
        links.0.push(peer);
    }
    links.0.push(up.clone());
    let net = format!("10.254.{}", n % 250);
    let vms = [uuid(), uuid()];
    let macs = ["fa:16:3e:88:00:01", "fa:16:3e:88:00:02"];
    let ips = [format!("{net}.31"), format!("{net}.32")];
    let l3 = uuid();
    let _: NetworkPrepared = a
        .ok(
            PATH_NETWORK_PREPARE,
            json!({"bridges": [{"l2Uuid": uuid(), "physicalInterface": up}],
                   "taps": [{"vmUuid": vms[0], "tapName": taps[0], "mac": macs[0], "bridgeName": br},
                            {"vmUuid": vms[1], "tapName": taps[1], "mac": macs[1], "bridgeName": br}],
                   "dhcp": [{"l3Uuid": l3, "bridgeName": br, "gateway": format!("{net}.1"), "netmask": "255.255.255.0",
                             "leases": [{"mac": macs[0], "ip": ips[0]}, {"mac": macs[1], "ip": ips[1]}]}]}),
        )
        .await;
    let image_uuid = uuid();
    let cache: ImageCacheInfo = a.ok(PATH_IMAGE_CACHE, json!({"imageUuid": image_uuid, "sourcePath": image})).await;
    let mut serials = Vec::new();
    for i in 0..2 {
        let root = d.path().join(format!("ps/{}.qcow2", vms[i]));
        let _: VolumeInfo = a
            .ok(
                PATH_VOLUME_CREATE,
                json!({"volumeUuid": vms[i], "installPath": root, "size": 0, "backingFile": cache.install_path}),
            )
            .await;
        let st: VmState = a
            .ok(
                PATH_VM_START,
                json!({"vmUuid": vms[i], "cpuNum": 1, "memorySize": 128 << 20,
                       "rootVolume": {"volumeUuid": vms[i], "installPath": root, "deviceId": 0},
                       "nics": [{"mac": macs[i], "tapName": taps[i], "deviceId": 0}],
                       "userData": format!("ping={}", ips[1 - i])}),
            )
            .await;
        serials.push(PathBuf::from(st.serial_log.unwrap()));
    }
    for i in 0..2 {
        let log = wait_for(&serials[i], "RZSTACK-GUEST-PING-", Duration::from_secs(180)).await;
        let up = format!("RZSTACK-GUEST-UP ip={}", ips[i]);
        assert!(log.lines().any(|l| l.trim_end() == up), "{log}");
        assert!(log.contains(&format!("RZSTACK-GUEST-PING-OK {}", ips[1 - i])), "{log}");
    }
    for v in &vms {
        let st: VmState = a.ok(PATH_VM_STOP, json!({"vmUuid": v, "mode": "grace", "timeoutSecs": 60})).await;
        assert_eq!(st.stopped_by.as_deref(), Some("graceful"));
        let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": v})).await;
    }
    let _: Deleted = a.ok(PATH_NETWORK_RELEASE, json!({"taps": taps, "dhcp": [l3], "bridges": [br.clone()]})).await;
    assert!(!Path::new("/sys/class/net").join(&br).exists());
    a.shutdown().await;
}
