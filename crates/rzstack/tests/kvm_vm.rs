//! CreateVmInstance on a real KVM host: a real `rzstack agent` driven by a real `rzstack serve`
//! boots the test guest image under QEMU (image cache, thin root overlay, bridge on a veth end,
//! tap, static DHCP lease); the guest reports the NIC's IP on its serial console; destroy ends
//! the QEMU process. Skips with a reason when not root, or QEMU / dnsmasq / the test image are
//! unavailable.
mod common;
use common::kvm::{qemu_pids, uuid as u, walk, KvmCloud};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn create_vm_boots_a_guest_on_a_kvm_host() {
    let Some(c) = KvmCloud::setup("kvm_vm", "k").await else { return };
    let (s, agent, ps_dir) = (&c.s, &c.agent, &c.ps_dir);
    let (zone, cluster, host, ps) = (c.zone.clone(), c.cluster.clone(), c.host.clone(), c.ps.clone());
    let (image, l3, net, offering) = (c.image.clone(), c.l3.clone(), c.net.clone(), c.offering.clone());
    let n = std::process::id() % 1000;

    // CreateVmInstance: Running on the KVM host, QEMU runs it, the guest gets the NIC's IP.
    let vm = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm1", "instanceOfferingUuid": offering, "imageUuid": image,
                "l3NetworkUuids": [l3]}})),
        )
        .await["inventory"]
        .clone();
    let vu = u(&vm);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(vm["hostUuid"], host.as_str());
    let ip = vm["vmNics"][0]["ip"].as_str().expect("nic ip").to_string();
    assert!(ip.starts_with(&net), "{ip}");
    let st = agent.vm_status(&vu).await;
    assert_eq!(st["state"], "Running", "{st}");
    let pid = st["pid"].as_u64().expect("pid") as u32;
    assert!(qemu_pids(&vu).contains(&pid), "a QEMU process runs the VM: {st}");
    let roots: Vec<PathBuf> =
        walk(ps_dir.path()).into_iter().filter(|p| p.to_string_lossy().contains("rootVolumes")).collect();
    assert_eq!(roots.len(), 1, "the root volume is on the local primary storage: {roots:?}");
    let log = st["serialLog"].as_str().expect("serial log").to_string();
    let marker = format!("RZSTACK-GUEST-UP ip={ip}");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains(&marker) {
            break;
        }
        assert!(Instant::now() < deadline, "no {marker} on the serial console:\n{t}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Reboot: the guest runs again under QEMU.
    let act = format!("/vm-instances/{vu}/actions");
    let r = s.ok("PUT", &act, Some(json!({"rebootVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running");
    let st = agent.vm_status(&vu).await;
    assert_eq!(st["state"], "Running", "{st}");
    let pid = st["pid"].as_u64().expect("pid") as u32;
    assert_eq!(qemu_pids(&vu), vec![pid]);

    // Stop (cold): no QEMU; start: QEMU again, on the same thin root volume, same IP.
    let r = s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(r["inventory"]["state"], "Stopped");
    assert!(qemu_pids(&vu).is_empty(), "stop leaves no QEMU process");
    assert_eq!(agent.vm_status(&vu).await["state"], "Stopped");
    let r = s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running");
    let st = agent.vm_status(&vu).await;
    assert_eq!(st["state"], "Running", "{st}");
    let pid2 = st["pid"].as_u64().expect("pid") as u32;
    assert_ne!(pid2, pid, "a new QEMU process");
    assert_eq!(qemu_pids(&vu), vec![pid2]);

    // Destroy: the QEMU process is gone and the agent no longer runs it.
    s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    assert_eq!(s.query(&format!("/vm-instances/{vu}")).await[0]["state"], "Destroyed");
    assert!(qemu_pids(&vu).is_empty(), "no QEMU process is left for the VM");
    assert!(!Path::new("/sys/class/net").join(format!("tap{}0", &vu[..8])).exists(), "destroy deletes the tap");
    assert_ne!(agent.vm_status(&vu).await["state"], "Running");
    let root_file =
        |d: &Path| walk(d).into_iter().filter(|p| p.to_string_lossy().contains("rootVolumes")).collect::<Vec<_>>();
    assert_eq!(root_file(ps_dir.path()).len(), 1, "destroy keeps the root volume until expunge");
    s.ok("PUT", &act, Some(json!({"expungeVmInstance": {}}))).await;
    assert!(s.query(&format!("/vm-instances/{vu}")).await.is_empty());
    assert!(root_file(ps_dir.path()).is_empty(), "expunge deletes the root volume file");

    // ThickProvisioning root volume and a data volume: a fully allocated independent root file,
    // a data file of the offering's size; destroy + expunge delete the root file.
    let disk = u(&s
        .ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d", "diskSize": 32u64 << 20}})))
        .await["inventory"]);
    let vm3 = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm3", "instanceOfferingUuid": offering, "imageUuid": image,
                "l3NetworkUuids": [l3], "dataDiskOfferingUuids": [disk],
                "rootVolumeSystemTags": ["volumeProvisioningStrategy::ThickProvisioning"]}})),
        )
        .await["inventory"]
        .clone();
    let v3 = u(&vm3);
    assert_eq!(vm3["state"], "Running", "{vm3}");
    assert_eq!(agent.vm_status(&v3).await["state"], "Running");
    let vols = &vm3["allVolumes"];
    let root3 = vols.as_array().expect("allVolumes").iter().find(|v| v["type"] == "Root").expect("root").clone();
    let data3 = vols.as_array().expect("allVolumes").iter().find(|v| v["type"] == "Data").expect("data").clone();
    let info = |p: &str| -> Value {
        let o = Command::new("qemu-img").args(["info", "--output=json", "-U", p]).output().expect("qemu-img");
        assert!(o.status.success(), "qemu-img info {p}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("json")
    };
    let ri = info(root3["installPath"].as_str().expect("installPath"));
    assert!(ri.get("backing-filename").is_none(), "a thick root volume has no backing file: {ri}");
    let (vsize, actual) = (ri["virtual-size"].as_i64().expect("size"), ri["actual-size"].as_i64().expect("actual"));
    assert!(actual * 10 >= vsize * 9, "thick: actual {actual} of {vsize}");
    let di = info(data3["installPath"].as_str().expect("installPath"));
    assert_eq!(di["virtual-size"], 32u64 << 20, "{di}");
    s.ok("DELETE", &format!("/vm-instances/{v3}"), None).await;
    assert!(qemu_pids(&v3).is_empty());
    s.ok("PUT", &format!("/vm-instances/{v3}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(root_file(ps_dir.path()).is_empty(), "expunge deletes the thick root volume file");

    // CreateStopped: volumes only, no QEMU until StartVmInstance.
    let vm4 = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm4", "instanceOfferingUuid": offering, "imageUuid": image,
                "l3NetworkUuids": [l3], "strategy": "CreateStopped"}})),
        )
        .await["inventory"]
        .clone();
    let v4 = u(&vm4);
    assert_eq!(vm4["state"], "Stopped", "{vm4}");
    assert!(qemu_pids(&v4).is_empty(), "a CreateStopped VM does not run");
    assert_eq!(root_file(ps_dir.path()).len(), 1, "its root volume exists");
    let r = s.ok("PUT", &format!("/vm-instances/{v4}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running");
    assert_eq!(agent.vm_status(&v4).await["state"], "Running");
    assert_eq!(qemu_pids(&v4).len(), 1);
    s.ok("DELETE", &format!("/vm-instances/{v4}"), None).await;
    assert!(qemu_pids(&v4).is_empty());
    s.ok("PUT", &format!("/vm-instances/{v4}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(root_file(ps_dir.path()).is_empty());

    // An L2 on an interface the host does not have: the network cannot be prepared, the
    // creation fails with HOST.1005 and is undone (no VM, no volume file, no QEMU, the IP free).
    let bad_if = format!("rzk{n}x");
    let l2b = u(&s
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "l2b", "zoneUuid": zone, "physicalInterface": bad_if}})),
        )
        .await["inventory"]);
    s.ok("POST", &format!("/l2-networks/{l2b}/clusters/{cluster}"), None).await;
    let l3b = u(&s.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3b", "l2NetworkUuid": l2b}}))).await
        ["inventory"]);
    s.ok(
        "POST",
        &format!("/l3-networks/{l3b}/ip-ranges"),
        Some(json!({"params": {"name": "r", "startIp": "10.251.0.10", "endIp": "10.251.0.10",
            "netmask": "255.255.255.0", "gateway": "10.251.0.1"}})),
    )
    .await;
    let ps_before = s.query(&format!("/primary-storage/{ps}")).await[0]["availableCapacity"].clone();
    let e = s
        .fails(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm2", "instanceOfferingUuid": offering, "imageUuid": image,
                "l3NetworkUuids": [l3b]}})),
        )
        .await;
    assert_error(&e, "SYS.1006", "the interface rzk");
    assert_error(&e["cause"], "HOST.1005", "failed to prepare the network");
    assert!(s.query("/vm-instances?q=name=vm2").await.is_empty(), "no VM is left");
    assert!(root_file(ps_dir.path()).is_empty(), "the root volume file is deleted again");
    assert!(!Path::new("/sys/class/net").join(format!("br_{bad_if}")).exists());
    assert_eq!(s.query(&format!("/primary-storage/{ps}")).await[0]["availableCapacity"], ps_before);
    let cap = s.get(&format!("/ip-capacity?l3NetworkUuids={l3b}")).await;
    assert_eq!(cap.body["usedIpAddressNumber"], 0, "{}", cap.text);
    assert_eq!(cap.body["availableCapacity"], 1, "{}", cap.text);
}
