//! Guests on a real KVM host, seen from inside (their serial consoles), all through the HTTP
//! API: two VMs on one L3 ping each other (user data given as upstream's `userdata::<base64>`
//! system tag), data volumes appear in the guest with their sizes, `devices.tpm.enable` gives
//! the guest /dev/tpm0, a VM made from a snapshot of a running VM's root volume boots with its
//! own IP, an ISO VM runs with the ISO as its first boot device and a blank root volume, a VM
//! boots from an existing volume (diskAOs sourceType VolumeVO), and destroy + expunge (and
//! ExpungeDataVolume, DeleteVolumeSnapshot) leave no QEMU, tap, DHCP lease or file behind.
//! At most two guests boot at a time. Skips with a reason when not root, or QEMU / dnsmasq /
//! the test image are unavailable.
mod common;
use common::assert_error;
use common::kvm::{have, qemu_pids, uuid as u, walk, KvmCloud};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lines of the agent's DHCP host files (dnsmasq's static leases) that name `mac`.
fn lease_lines(agent_dir: &Path, mac: &str) -> Vec<String> {
    walk(&agent_dir.join("dhcp"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "hosts"))
        .flat_map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| l.to_ascii_lowercase().contains(&mac.to_ascii_lowercase()))
        .collect()
}

fn tap(vm: &str, device: i64) -> PathBuf {
    Path::new("/sys/class/net").join(format!("tap{}{device}", &vm[..8]))
}

/// `qemu-img info` of a file (`-U`: a running QEMU may hold it).
fn img_info(p: &str) -> Value {
    let o = Command::new("qemu-img").args(["info", "-U", "--output=json", p]).output().expect("qemu-img");
    assert!(o.status.success(), "qemu-img info {p}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

fn qemu_cmdline(vm: &str) -> String {
    let pids = qemu_pids(vm);
    assert_eq!(pids.len(), 1, "one QEMU runs {vm}: {pids:?}");
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline")).replace('\0', " ")
}

/// Files of a VM's volumes (from the API), by volume uuid.
async fn volume_files(c: &KvmCloud, vm: &str) -> Vec<(String, String, Value)> {
    c.s.query(&format!("/volumes?q=vmInstanceUuid={vm}"))
        .await
        .into_iter()
        .map(|v| (u(&v), v["installPath"].as_str().expect("installPath").to_string(), v))
        .collect()
}

/// Destroy and expunge a VM: no QEMU, no tap, no lease for its MAC; the root volume file
/// (and its snapshots) gone.
async fn destroy_and_expunge(c: &KvmCloud, vm: &Value) {
    let vu = u(vm);
    let root_file = c.s.query(&format!("/volumes/{}", vm["rootVolumeUuid"].as_str().expect("root"))).await[0]
        ["installPath"]
        .as_str()
        .expect("root path")
        .to_string();
    c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(c.s.query(&format!("/vm-instances/{vu}")).await.is_empty());
    assert!(qemu_pids(&vu).is_empty(), "no QEMU left for {vu}");
    for n in vm["vmNics"].as_array().expect("nics") {
        let mac = n["mac"].as_str().expect("mac");
        assert!(!tap(&vu, n["deviceId"].as_i64().expect("device")).exists(), "no tap left for {vu}");
        assert_eq!(lease_lines(c.agent_dir.path(), mac), Vec::<String>::new(), "no DHCP lease left for {mac}");
    }
    assert!(!Path::new(&root_file).exists(), "the root volume file {root_file} is deleted");
    let dir = Path::new(&root_file).parent().expect("dir");
    assert!(!dir.exists(), "the root volume's directory (and its snapshots) are gone: {:?}", walk(dir));
}

#[tokio::test]
async fn guests_on_a_kvm_host() {
    let Some(c) = KvmCloud::setup("kvm_guest", "g").await else { return };
    let s = &c.s;
    let tpm = have("swtpm");
    if !tpm {
        eprintln!("kvm_guest: swtpm is not installed: the TPM part is not checked");
    }

    // (a, b, c) VM b: two data volumes, a TPM, user data that pings VM a; VM a: user data that
    // pings b. Both IPs are fixed with staticIp (a random pick for b could be a's). Both boot
    // at once.
    let a_ip = format!("{}.19", c.net);
    let b_static = format!("{}.18", c.net);
    let userdata = |text: &str| format!("userdata::{}", b64(text));
    let mut params = json!({"name": "b", "instanceOfferingUuid": c.offering, "imageUuid": c.image,
        "l3NetworkUuids": [c.l3], "dataDiskSizes": [64 * MIB, 96 * MIB],
        "dataVolumeSystemTags": ["volumeProvisioningStrategy::ThickProvisioning"]});
    if tpm {
        params["devices"] = json!({"tpm": {"enable": true}});
    }
    let b = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": params,
            "systemTags": [format!("staticIp::{}::{b_static}", c.l3), userdata(&format!("ping={a_ip}"))]})),
        )
        .await["inventory"]
        .clone();
    let bu = u(&b);
    assert_eq!(b["state"], "Running", "{b}");
    let b_ip = b["vmNics"][0]["ip"].as_str().expect("b ip").to_string();
    assert_eq!(b_ip, b_static, "{b}");
    let tags = s.query(&format!("/system-tags?q=resourceUuid={bu}")).await;
    assert!(
        tags.iter().any(|t| t["tag"] == userdata(&format!("ping={a_ip}"))),
        "the userdata tag is recorded on the VM: {tags:?}"
    );
    let a = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "a", "instanceOfferingUuid": c.offering, "imageUuid": c.image,
                "l3NetworkUuids": [c.l3]},
                "systemTags": [format!("staticIp::{}::{a_ip}", c.l3), userdata(&format!("hello ping={b_ip}"))]})),
        )
        .await["inventory"]
        .clone();
    let au = u(&a);
    assert_eq!(a["vmNics"][0]["ip"], a_ip.as_str(), "{a}");

    let log_b = c.wait_serial(&bu, &format!("RZSTACK-GUEST-PING-OK {a_ip}")).await;
    assert!(log_b.contains(&format!("RZSTACK-GUEST-UP ip={b_ip}")), "{log_b}");
    let log_a = c.wait_serial(&au, &format!("RZSTACK-GUEST-PING-OK {b_ip}")).await;
    assert!(log_a.contains(&format!("RZSTACK-GUEST-UP ip={a_ip}")), "{log_a}");
    // the data volumes, as the guest sees them (vda is the root volume)
    for (dev, size) in [("vdb", 64 * MIB), ("vdc", 96 * MIB)] {
        let line = format!("RZSTACK-GUEST-DISK {dev} size={size}");
        assert!(log_b.lines().any(|l| l.trim() == line), "no {line} on b's console:\n{log_b}");
    }
    assert!(!log_b.contains("RZSTACK-GUEST-DISK vdd"), "{log_b}");
    if tpm {
        assert!(log_b.contains("RZSTACK-GUEST-TPM /dev/tpm0"), "{log_b}");
        assert!(!log_a.contains("RZSTACK-GUEST-TPM"), "a has no TPM:\n{log_a}");
    }
    let b_vols = volume_files(&c, &bu).await;
    assert_eq!(b_vols.len(), 3, "{b_vols:?}");
    for (_, f, v) in &b_vols {
        assert!(Path::new(f).is_file(), "{f}");
        if v["type"] == "Data" {
            assert_eq!(img_info(f)["virtual-size"].as_u64(), v["size"].as_u64(), "{v}");
            // ThickProvisioning (dataVolumeSystemTags): fully allocated
            let used = std::fs::metadata(f).expect("stat").blocks() * 512;
            assert!(used * 10 >= v["size"].as_u64().expect("size") * 9, "{f}: {used} bytes used: {v}");
        }
    }

    // (d) a snapshot of a's root volume while a runs (QEMU copies it), and a VM from it: the
    // copy boots and gets its own IP.
    let a_root = a["rootVolumeUuid"].as_str().expect("root").to_string();
    let snap = s
        .ok("POST", &format!("/volumes/{a_root}/volume-snapshots"), Some(json!({"params": {"name": "snap-a"}})))
        .await["inventory"]
        .clone();
    let snap_file = snap["primaryStorageInstallPath"].as_str().expect("snapshot file").to_string();
    assert!(snap_file.contains(&format!("vol-{a_root}/snapshots/")), "{snap}");
    let si = img_info(&snap_file);
    assert_eq!(si["format"], "qcow2");
    assert!(si["backing-filename"].is_null(), "a snapshot is an independent file: {si}");
    assert!(snap["size"].as_i64().expect("size") > 0, "{snap}");
    let from_snap = s
        .ok(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{}", u(&snap)),
            Some(json!({"params": {"name": "from-snap", "instanceOfferingUuid": c.offering,
                "l3NetworkUuids": [c.l3]}})),
        )
        .await["inventory"]
        .clone();
    let fu = u(&from_snap);
    assert_eq!(from_snap["state"], "Running", "{from_snap}");
    let f_ip = from_snap["vmNics"][0]["ip"].as_str().expect("ip").to_string();
    let f_root = volume_files(&c, &fu).await.into_iter().find(|(_, _, v)| v["type"] == "Root").expect("root").1;
    assert!(img_info(&f_root)["backing-filename"].is_null(), "the root volume is a copy of the snapshot");
    c.wait_serial(&fu, &format!("RZSTACK-GUEST-UP ip={f_ip}")).await;
    // DeleteVolumeSnapshot deletes the snapshot file; the VM made from it keeps running.
    s.ok("DELETE", &format!("/volume-snapshots/{}", u(&snap)), None).await;
    assert!(!Path::new(&snap_file).exists(), "{snap_file}");
    assert_eq!(c.agent.vm_status(&fu).await["state"], "Running");
    // a second snapshot goes with a's root volume when a is expunged
    let snap2 = s
        .ok("POST", &format!("/volumes/{a_root}/volume-snapshots"), Some(json!({"params": {"name": "snap-a2"}})))
        .await["inventory"]
        .clone();
    let snap2_file = snap2["primaryStorageInstallPath"].as_str().expect("snapshot file").to_string();
    assert!(Path::new(&snap2_file).is_file(), "{snap2}");
    destroy_and_expunge(&c, &a).await;
    assert!(!Path::new(&snap2_file).exists(), "{snap2_file}");
    assert!(s.query(&format!("/volume-snapshots/{}", u(&snap2))).await.is_empty());

    // (f) destroy + expunge: no QEMU, tap, lease or root file; data volumes are detached
    // (upstream), and ExpungeDataVolume deletes their files.
    destroy_and_expunge(&c, &b).await;
    destroy_and_expunge(&c, &from_snap).await;
    let data: Vec<_> = b_vols.iter().filter(|(_, _, v)| v["type"] == "Data").collect();
    for (vol, f, _) in &data {
        let v = s.query(&format!("/volumes/{vol}")).await;
        assert!(v[0]["vmInstanceUuid"].is_null(), "{v:?}");
        assert!(Path::new(f).is_file(), "a detached data volume keeps its file");
    }
    // the first data volume is deleted and expunged; the second becomes (g)'s root volume
    let (dv, df, _) = data[0];
    s.ok("DELETE", &format!("/volumes/{dv}"), None).await;
    assert!(Path::new(df).is_file(), "DeleteDataVolume (policy Delay) keeps the file until expunge");
    s.ok("PUT", &format!("/volumes/{dv}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert!(!Path::new(df).exists(), "ExpungeDataVolume deletes {df}");
    assert!(!Path::new(df).parent().expect("dir").exists(), "and its directory");

    // (e) an ISO image: attached as a CD-ROM that boots first, the root volume blank with
    // rootDiskSize; (g) a VM whose root volume is an existing volume, used as it is.
    // (no dot in the path: upstream refuses image paths under hidden directories)
    let iso_dir = tempfile::Builder::new().prefix("rzstack-iso").tempdir().expect("tempdir");
    let iso_file = iso_dir.path().join("test.iso");
    let mut content = b"RZSTACK-TEST-ISO".to_vec();
    content.resize(MIB as usize, 0);
    std::fs::write(&iso_file, content).expect("iso");
    let iso = u(&s
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "iso", "url": format!("file://{}", iso_file.display()),
                "format": "iso", "mediaType": "ISO", "backupStorageUuids": [c.bs], "platform": "Linux",
                "guestOsType": "Linux", "architecture": "x86_64"}})),
        )
        .await["inventory"]);
    let d = c.create_vm("iso", json!({"imageUuid": iso, "rootDiskSize": 48 * MIB})).await;
    let du = u(&d);
    assert_eq!(d["state"], "Running", "{d}");
    let cmd = qemu_cmdline(&du);
    let cached_iso = format!("imagecache/iso/{iso}/{iso}.iso");
    assert!(cmd.contains(&cached_iso), "the ISO is attached: {cmd}");
    assert!(cmd.contains("id=cdrom0,bootindex=1"), "the CD-ROM boots first: {cmd}");
    let d_root = volume_files(&c, &du).await.into_iter().find(|(_, _, v)| v["type"] == "Root").expect("root");
    let ri = img_info(&d_root.1);
    assert_eq!(ri["virtual-size"].as_u64(), Some(48 * MIB), "{ri}");
    assert!(ri["backing-filename"].is_null(), "a blank root volume: {ri}");
    assert_eq!(d_root.2["size"].as_u64(), Some(48 * MIB));
    assert_eq!(d["vmCdRoms"][0]["isoUuid"], iso.as_str(), "the ISO is in the first CD-ROM: {d}");
    // it stays there: a stopped and started ISO VM still boots from it first
    let act = format!("/vm-instances/{du}/actions");
    s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert!(qemu_pids(&du).is_empty());
    // a snapshot of a stopped VM's volume (qemu-img copies it); it goes with the volume
    let ds = s
        .ok("POST", &format!("/volumes/{}/volume-snapshots", d_root.0), Some(json!({"params": {"name": "snap-d"}})))
        .await["inventory"]
        .clone();
    let ds_info = img_info(ds["primaryStorageInstallPath"].as_str().expect("snapshot file"));
    assert_eq!(ds_info["virtual-size"].as_u64(), Some(48 * MIB), "{ds_info}");
    assert_eq!(s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await["inventory"]["state"], "Running");
    let cmd = qemu_cmdline(&du);
    assert!(cmd.contains(&cached_iso) && cmd.contains("id=cdrom0,bootindex=1"), "{cmd}");

    // An accounted-only data volume (no file yet): a snapshot of it has no file either, and a
    // VM from that snapshot is refused by the KVM host (HOST.1005), nothing left behind.
    let x = u(&s
        .ok(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "x", "diskSize": 32 * MIB, "primaryStorageUuid": c.ps},
                "systemTags": [format!("localStorage::hostUuid::{}", c.host)]})),
        )
        .await["inventory"]);
    let xs = s.ok("POST", &format!("/volumes/{x}/volume-snapshots"), Some(json!({"params": {"name": "snap-x"}}))).await
        ["inventory"]
        .clone();
    assert!(xs["primaryStorageInstallPath"].is_null(), "{xs}");
    let files_before = walk(c.ps_dir.path());
    let e = s
        .fails(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{}", u(&xs)),
            Some(json!({"params": {"name": "from-x", "instanceOfferingUuid": c.offering, "l3NetworkUuids": [c.l3],
                "platform": "Linux"}})),
        )
        .await;
    assert_error(&e, "SYS.1006", "has no file on a KVM host");
    assert_error(&e["cause"], "HOST.1005", &format!("volume snapshot[uuid:{}] has no file", u(&xs)));
    assert!(s.query("/vm-instances?q=name=from-x").await.is_empty(), "no VM is left");
    assert_eq!(walk(c.ps_dir.path()), files_before, "no file is made");
    s.ok("DELETE", &format!("/volume-snapshots/{}", u(&xs)), None).await;

    // (g) a VM whose root volume is an existing volume (b's second data volume), used as it
    // is, with the accounted-only volume as a data volume (it gets its file now) and a data
    // volume from a DataVolumeTemplate image (its content is the image's).
    let guest_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-guest/guest.qcow2");
    let guest_file = guest_file.canonicalize().expect("test image");
    let dvt = u(&s
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "dvt", "url": format!("file://{}", guest_file.display()),
                "format": "qcow2", "mediaType": "DataVolumeTemplate", "backupStorageUuids": [c.bs]}})),
        )
        .await["inventory"]);
    let (gv, gf, _) = data[1];
    let g = s
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "g", "instanceOfferingUuid": c.offering, "l3NetworkUuids": [c.l3],
                "diskAOs": [{"boot": true, "platform": "Linux", "guestOsType": "Linux", "architecture": "x86_64",
                    "sourceType": "VolumeVO", "sourceUuid": gv, "systemTags": ["driver::virtio"]},
                    {"boot": false, "sourceType": "VolumeVO", "sourceUuid": x},
                    {"boot": false, "templateUuid": dvt, "name": "from-template"}]}})),
        )
        .await["inventory"]
        .clone();
    let gu = u(&g);
    assert_eq!(g["state"], "Running", "{g}");
    assert_eq!(g["rootVolumeUuid"], gv.as_str(), "{g}");
    let cmd = qemu_cmdline(&gu);
    assert!(cmd.contains(gf.as_str()), "QEMU boots from the existing volume's file {gf}: {cmd}");
    let xv = s.query(&format!("/volumes/{x}")).await[0].clone();
    assert_eq!(xv["vmInstanceUuid"], gu.as_str(), "{xv}");
    let xf = xv["installPath"].as_str().expect("x has a file now").to_string();
    assert!(xf.starts_with(&c.ps_dir.path().to_string_lossy().to_string()) && xf.contains("/dataVolumes/"), "{xf}");
    assert_eq!(img_info(&xf)["virtual-size"].as_u64(), Some(32 * MIB));
    assert!(cmd.contains(&xf), "x is a disk of g: {cmd}");
    let tv = s.query(&format!("/volumes?q=vmInstanceUuid={gu}&q=name=from-template")).await[0].clone();
    let tf = tv["installPath"].as_str().expect("path").to_string();
    assert!(cmd.contains(&tf), "{cmd}");
    let o = Command::new("qemu-img").args(["compare", "-U"]).arg(&guest_file).arg(&tf).output().expect("qemu-img");
    assert!(o.status.success(), "the data volume has the template's content: {}", String::from_utf8_lossy(&o.stdout));
    destroy_and_expunge(&c, &d).await;
    destroy_and_expunge(&c, &g).await;
    assert!(!Path::new(gf).exists(), "{gf}");
    assert!(Path::new(&xf).is_file(), "x is detached, its file kept");

    // A creation that fails on the host (its L2's interface is missing) is undone without
    // touching the existing volume it was to boot from: x keeps its file, detached again.
    let bad_if = format!("rzg{}x", std::process::id() % 1000);
    let l2b = u(&s
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "l2b", "zoneUuid": c.zone, "physicalInterface": bad_if}})),
        )
        .await["inventory"]);
    s.ok("POST", &format!("/l2-networks/{l2b}/clusters/{}", c.cluster), None).await;
    let l3b = u(&s.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3b", "l2NetworkUuid": l2b}}))).await
        ["inventory"]);
    s.ok(
        "POST",
        &format!("/l3-networks/{l3b}/ip-ranges"),
        Some(json!({"params": {"name": "r", "startIp": "10.248.0.10", "endIp": "10.248.0.10",
            "netmask": "255.255.255.0", "gateway": "10.248.0.1"}})),
    )
    .await;
    let e = s
        .fails(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "bad", "instanceOfferingUuid": c.offering, "l3NetworkUuids": [l3b],
                "diskAOs": [{"boot": true, "platform": "Linux", "guestOsType": "Linux", "architecture": "x86_64",
                    "sourceType": "VolumeVO", "sourceUuid": x, "systemTags": ["driver::virtio"]}]}})),
        )
        .await;
    assert_error(&e, "SYS.1006", "the interface rzg");
    assert_error(&e["cause"], "HOST.1005", "failed to prepare the network");
    assert!(s.query("/vm-instances?q=name=bad").await.is_empty(), "no VM is left");
    assert!(Path::new(&xf).is_file(), "the existing volume's file is kept");
    let xv = s.query(&format!("/volumes/{x}")).await[0].clone();
    assert!(xv["vmInstanceUuid"].is_null() && xv["type"] == "Data", "{xv}");
    assert_eq!(xv["installPath"], xf.as_str());
    for v in [x, u(&tv)] {
        s.ok("DELETE", &format!("/volumes/{v}"), None).await;
        s.ok("PUT", &format!("/volumes/{v}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    }
    assert!(!Path::new(&xf).exists(), "{xf}");
    assert!(!Path::new(&tf).exists(), "{tf}");

    let left: Vec<PathBuf> =
        walk(c.ps_dir.path()).into_iter().filter(|p| !p.to_string_lossy().contains("imagecache")).collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "no volume or snapshot file is left on the primary storage");
}
