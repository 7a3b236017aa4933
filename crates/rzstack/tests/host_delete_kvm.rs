//! DeleteHost of a KVM host with guests (a real agent and real QEMU guests under TCG): the
//! agent ends the QEMU of every VM the host ran, releases their taps and DHCP leases and
//! deletes the volume files of the host's LocalStorage whose rows go with it; an agent that no
//! longer answers does not hold the deletion up.

mod common;

use common::kvm::{qemu_pids, sh, uuid, KvmCloud};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

fn tap_of(vm: &str) -> String {
    format!("tap{}0", &vm[..8])
}

fn link_exists(name: &str) -> bool {
    sh(&["ip", "link", "show", name])
}

/// The DHCP host entries the agent's dnsmasq serves on `l3`.
fn dhcp_hosts(c: &KvmCloud, l3: &str) -> String {
    std::fs::read_to_string(c.agent_dir.path().join("dhcp").join(l3).join("hosts")).unwrap_or_default()
}

/// The VM's root volume file (on the LocalStorage directory).
async fn root_file(c: &KvmCloud, vm: &Value) -> String {
    let root = s(&vm["rootVolumeUuid"]);
    let v = c.s.query(&format!("/volumes/{root}")).await;
    s(&v[0]["installPath"])
}

/// QEMU of `vm` ended (the agent kills it at once; allow the process table a moment).
async fn wait_no_qemu(vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemu_pids(vm).is_empty() {
        assert!(Instant::now() < deadline, "QEMU of {vm} still runs: {:?}", qemu_pids(vm));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Running VM and a (cold-)stopped one on the host, both with their root volume on the
/// host's LocalStorage: deleting the host ends the running QEMU, removes both VMs' taps and
/// DHCP entries and root volume files, and deletes their rows (upstream deletes the VMs whose
/// root volume was on the deleted host's local storage).
#[tokio::test]
async fn deleting_a_kvm_host_ends_its_guests() {
    let Some(c) = KvmCloud::setup("host_delete_kvm", "hd").await else { return };
    let srv = &c.s;
    let a = c.create_vm("a", json!({})).await;
    let b = c.create_vm("b", json!({})).await;
    let (au, bu) = (uuid(&a), uuid(&b));
    assert_eq!(a["state"], "Running", "{a}");
    assert_eq!(a["hostUuid"], c.host.as_str(), "{a}");
    srv.ok("PUT", &format!("/vm-instances/{bu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(srv.query(&format!("/vm-instances/{bu}")).await[0]["state"], "Stopped");
    // a snapshot of b's root volume: a file on the same LocalStorage
    let b_root = s(&b["rootVolumeUuid"]);
    let snap = srv
        .ok("POST", &format!("/volumes/{b_root}/volume-snapshots"), Some(json!({"params": {"name": "sb"}})))
        .await["inventory"]
        .clone();
    let snap_file = s(&snap["primaryStorageInstallPath"]);
    assert!(Path::new(&snap_file).exists(), "{snap}");

    // before: a's QEMU runs, both taps and DHCP entries are there (a stop keeps them), both files
    assert!(!qemu_pids(&au).is_empty(), "QEMU of {au} runs");
    assert!(qemu_pids(&bu).is_empty(), "QEMU of {bu} was stopped");
    assert_eq!(c.agent.vm_status(&au).await["state"], "Running");
    let (fa, fb) = (root_file(&c, &a).await, root_file(&c, &b).await);
    let (ma, mb) = (s(&a["vmNics"][0]["mac"]), s(&b["vmNics"][0]["mac"]));
    for (vm, file, mac) in [(&au, &fa, &ma), (&bu, &fb, &mb)] {
        assert!(file.starts_with(&c.ps_dir.path().to_string_lossy().to_string()), "{file}");
        assert!(Path::new(file).exists(), "the root volume file {file} of {vm} exists");
        assert!(link_exists(&tap_of(vm)), "the tap of {vm} exists");
        assert!(dhcp_hosts(&c, &c.l3).to_lowercase().contains(&mac.to_lowercase()), "DHCP entry of {vm}");
    }

    assert_eq!(srv.ok("DELETE", &format!("/hosts/{}", c.host), None).await, json!({}));

    // the agent ended the guest and released what both VMs held on the host
    wait_no_qemu(&au).await;
    assert_ne!(c.agent.vm_status(&au).await["state"], "Running");
    let hosts = dhcp_hosts(&c, &c.l3).to_lowercase();
    for (vm, file, mac) in [(&au, &fa, &ma), (&bu, &fb, &mb)] {
        assert!(!link_exists(&tap_of(vm)), "the tap of {vm} is gone");
        assert!(!hosts.contains(&mac.to_lowercase()), "the DHCP entry of {vm} is gone: {hosts}");
        assert!(!Path::new(file).exists(), "the root volume file {file} of {vm} is gone");
    }
    // the rows: host, VMs, volumes, IPs gone
    assert!(srv.query(&format!("/hosts/{}", c.host)).await.is_empty());
    for vm in [&a, &b] {
        assert!(srv.query(&format!("/vm-instances/{}", uuid(vm))).await.is_empty(), "{vm}");
        assert!(srv.query(&format!("/volumes/{}", s(&vm["rootVolumeUuid"]))).await.is_empty(), "{vm}");
    }
    assert!(srv.query("/vm-instances/nics").await.is_empty(), "the NICs (and their IPs) are gone");
    assert!(srv.query(&format!("/volume-snapshots/{}", uuid(&snap))).await.is_empty());
    assert!(!Path::new(&snap_file).exists(), "the snapshot file {snap_file} is gone");
}

/// The host's agent accepts connections but never answers (a hung or half-dead host): the
/// deletion still succeeds, bounded by its short per-call limit (10 s) rather than the agent
/// request timeout (60 s), and its rows go; the guest keeps running there (nothing could reach it).
#[tokio::test]
async fn deleting_a_kvm_host_whose_agent_does_not_answer() {
    let Some(mut c) = KvmCloud::setup("host_delete_kvm", "hq").await else { return };
    let vm = c.create_vm("q", json!({})).await;
    let vu = uuid(&vm);
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
    c.agent.stop();
    // the agent's port now takes connections and answers nothing
    let silent = std::net::TcpListener::bind(("127.0.0.1", c.agent.port)).expect("bind the agent's port");

    let t = Instant::now();
    assert_eq!(c.s.ok("DELETE", &format!("/hosts/{}", c.host), None).await, json!({}));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(45), "the deletion waited for the silent agent: {took:?}");
    assert!(c.s.query(&format!("/hosts/{}", c.host)).await.is_empty());
    assert!(c.s.query(&format!("/vm-instances/{vu}")).await.is_empty());
    assert!(c.s.query(&format!("/volumes/{}", s(&vm["rootVolumeUuid"]))).await.is_empty());
    // nobody could reach the host: its guest still runs (the harness ends it)
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} still runs");
    drop(silent);
}

/// The cascades through the host deletion: deleting the cluster, or the zone, of a KVM host
/// ends the QEMU of its guests and releases their taps, as DeleteHost does.
#[tokio::test]
async fn deleting_the_cluster_or_zone_of_a_kvm_host_ends_its_guests() {
    for (prefix, what) in [("hc", "cluster"), ("hz", "zone")] {
        let Some(c) = KvmCloud::setup("host_delete_kvm", prefix).await else { return };
        let vm = c.create_vm("g", json!({})).await;
        let vu = uuid(&vm);
        assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
        assert!(link_exists(&tap_of(&vu)), "the tap of {vu} exists");
        let path = match what {
            "cluster" => format!("/clusters/{}", c.cluster),
            _ => format!("/zones/{}", c.zone),
        };
        assert_eq!(c.s.ok("DELETE", &path, None).await, json!({}), "{what}");
        wait_no_qemu(&vu).await;
        assert!(!link_exists(&tap_of(&vu)), "the tap of {vu} is gone after the {what} deletion");
        assert!(c.s.query(&format!("/hosts/{}", c.host)).await.is_empty(), "{what}");
        assert!(c.s.query(&format!("/vm-instances/{vu}")).await.is_empty(), "{what}");
    }
}
