//! Host networking through the agent's HTTP API, on dummy interfaces made by the test (never
//! the machine's own): bridges (NoVlan and VLAN), a tap per NIC, a dnsmasq per L3 with static
//! leases only, checked with a DHCP client in a private network namespace. Needs root, `ip`
//! and dnsmasq; skips with a message otherwise. Everything is removed again.
mod common;
use common::*;
use rzstack_api::agent::*;
use serde_json::json;
use std::path::Path;

fn sh(args: &[&str]) -> bool {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh_out(args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new(args[0]).args(&args[1..]).output().expect("run");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

fn master(ifname: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(ifname).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

/// A stand-in for a physical interface: a dummy, or (kernels without the dummy driver) one
/// end of a veth pair whose other end stays unused. The names to delete afterwards.
fn make_uplink(name: &str) -> Vec<String> {
    if sh(&["ip", "link", "add", name, "type", "dummy"]) {
        return vec![name.to_string()];
    }
    let peer = format!("{name}p");
    assert!(sh(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]), "cannot make {name}");
    eprintln!("NOTE: no dummy interfaces in this kernel; {name} is a veth");
    vec![name.to_string(), peer]
}

/// Deletes the links and the netns the test made, also when it fails.
struct Links {
    links: Vec<String>,
    netns: String,
}

impl Drop for Links {
    fn drop(&mut self) {
        for l in self.links.iter().rev() {
            if exists(l) {
                sh(&["ip", "link", "del", "dev", l]);
            }
        }
        sh(&["ip", "netns", "del", &self.netns]);
    }
}

/// Ask for a lease from inside `netns` on `ifname`: the address obtained, if any.
fn dhcp_client(netns: &str, ifname: &str, tries: &str) -> Option<String> {
    let (_, out) = sh_out(&[
        "ip",
        "netns",
        "exec",
        netns,
        "busybox",
        "udhcpc",
        "-i",
        ifname,
        "-q",
        "-n",
        "-t",
        tries,
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    out.lines().find_map(|l| l.split("lease of ").nth(1)).and_then(|r| r.split_whitespace().next()).map(String::from)
}

#[tokio::test]
async fn bridges_taps_and_static_dhcp_on_dummy_interfaces() {
    if !is_root() {
        eprintln!("SKIP network: needs root (bridges, taps, dnsmasq)");
        return;
    }
    if !require("network", &[("dnsmasq", "dnsmasq-base"), ("ip", "iproute2"), ("busybox", "busybox-static")]) {
        return;
    }
    let n = std::process::id() % 1000;
    let (d1, d2, d3) = (format!("rzt{n}a"), format!("rzt{n}b"), format!("rzt{n}c"));
    let (br1, br2) = (format!("br_{d1}"), format!("br_{d2}_100"));
    let (tap, veth, peer, veth2, peer2) =
        (format!("rzt{n}t"), format!("rzt{n}v"), format!("rzt{n}p"), format!("rzt{n}w"), format!("rzt{n}q"));
    let netns = format!("rztest{n}");
    let mut links =
        Links { links: vec![br1.clone(), br2.clone(), tap.clone(), veth.clone(), veth2.clone()], netns: netns.clone() };
    for d in [&d1, &d2, &d3] {
        links.links.extend(make_uplink(d));
    }
    assert!(sh(&["ip", "addr", "add", "10.252.0.1/24", "dev", &d3]));

    let dir = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(dir.path().to_path_buf());
    let a = Agent::start(dir.path()).await;
    let (l2a, l2b, l3) = (uuid(), uuid(), uuid());
    let vm = uuid();
    let (mac1, mac2) = ("fa:16:3e:12:34:01", "fa:16:3e:12:34:02");
    let subnet = format!("10.251.{}", n % 250);
    let gw = format!("{subnet}.1");

    // Refusals change nothing: a missing interface, an interface with an address.
    let e = a
        .fails(PATH_NETWORK_PREPARE, json!({"bridges": [{"l2Uuid": l2a, "physicalInterface": format!("rzt{n}x")}]}))
        .await;
    assert!(e.contains("does not exist"), "{e}");
    let e = a.fails(PATH_NETWORK_PREPARE, json!({"bridges": [{"l2Uuid": l2a, "physicalInterface": d3}]})).await;
    assert!(e.contains("IPv4 address"), "{e}");
    assert!(!exists(&format!("br_{d3}")) && master(&d3).is_none());
    let e = a
        .fails(
            PATH_NETWORK_PREPARE,
            json!({"dhcp": [{"l3Uuid": l3, "bridgeName": br1, "gateway": gw, "netmask": "255.0.255.0"}]}),
        )
        .await;
    assert!(e.contains("netmask"), "{e}");

    // VLAN: a sub-interface plus a bridge, where the kernel has 802.1Q.
    let vlan_if = format!("{d2}.100");
    let vlan = json!({"bridges": [{"l2Uuid": l2b, "physicalInterface": d2, "vlan": 100}]});
    let v = a.raw(PATH_NETWORK_PREPARE, vlan).await;
    if v["success"] == true {
        assert_eq!(v["result"]["bridges"], json!([br2]));
        assert_eq!(master(&vlan_if).as_deref(), Some(br2.as_str()));
        assert!(read(format!("/proc/net/vlan/{vlan_if}")).contains("VID: 100"));
    } else {
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("type vlan"), "{e}");
        eprintln!("NOTE: this kernel has no 802.1Q VLANs: {e}");
        assert!(!exists(&br2) && !exists(&vlan_if), "a failed VLAN leaves nothing");
    }

    let prepare = json!({
        "bridges": [{"l2Uuid": l2a, "physicalInterface": d1}],
        "taps": [{"vmUuid": vm, "tapName": tap, "mac": mac1, "bridgeName": br1}],
        "dhcp": [{"l3Uuid": l3, "bridgeName": br1, "gateway": gw, "netmask": "255.255.255.0", "dns": ["10.0.0.53"],
                  "leases": [{"mac": mac1, "ip": format!("{subnet}.10")}]}]
    });
    let r: NetworkPrepared = a.ok(PATH_NETWORK_PREPARE, prepare.clone()).await;
    assert_eq!(r.bridges, vec![br1.clone()]);
    assert_eq!(master(&d1).as_deref(), Some(br1.as_str()));
    assert_eq!(master(&tap).as_deref(), Some(br1.as_str()));
    assert_eq!(read(format!("/sys/class/net/{tap}/address")), "fe:16:3e:12:34:01");
    assert_eq!(read(format!("/sys/class/net/{tap}/ifalias")), format!("vm={vm} mac={mac1}"));
    let (_, addrs) = sh_out(&["ip", "-4", "-o", "addr", "show", "dev", &br1]);
    assert!(addrs.contains(&format!("{gw}/24")), "{addrs}");
    let l3dir = dir.path().join("dhcp").join(&l3);
    assert_eq!(read(l3dir.join("hosts")), format!("{mac1},{subnet}.10"));
    let pid1: u64 = read(l3dir.join("dnsmasq.pid")).parse().unwrap();
    assert!(alive(pid1));

    // Idempotent, and leases are added to the running dnsmasq (no restart).
    let mut again = prepare.clone();
    again["dhcp"][0]["leases"] = json!([{"mac": mac2, "ip": format!("{subnet}.11"), "hostname": "vm2"}]);
    let _: NetworkPrepared = a.ok(PATH_NETWORK_PREPARE, again).await;
    assert_eq!(read(l3dir.join("hosts")), format!("{mac1},{subnet}.10\n{mac2},{subnet}.11,vm2"));
    assert_eq!(read(l3dir.join("dnsmasq.pid")).parse::<u64>().unwrap(), pid1);

    // A DHCP client with the NIC's MAC gets exactly its address; an unknown MAC gets nothing.
    assert!(sh(&["ip", "netns", "add", &netns]));
    for (v, p, mac) in [(&veth, &peer, mac1), (&veth2, &peer2, "fa:16:3e:99:99:99")] {
        assert!(sh(&["ip", "link", "add", v, "type", "veth", "peer", "name", p]));
        assert!(sh(&["ip", "link", "set", p, "netns", &netns]));
        assert!(sh(&["ip", "-n", &netns, "link", "set", p, "address", mac, "up"]));
        assert!(sh(&["ip", "link", "set", v, "master", &br1, "up"]));
    }
    assert_eq!(dhcp_client(&netns, &peer, "10").as_deref(), Some(format!("{subnet}.10").as_str()));
    assert_eq!(dhcp_client(&netns, &peer2, "2"), None, "static leases only");
    let log = read(l3dir.join("dnsmasq.log"));
    assert!(log.contains("static leases only"), "{log}");

    // Dropping a lease restarts dnsmasq without it.
    let _: Deleted =
        a.ok(PATH_NETWORK_RELEASE, json!({"leases": [{"l3Uuid": l3, "macs": [mac1.to_uppercase()]}]})).await;
    assert_eq!(read(l3dir.join("hosts")), format!("{mac2},{subnet}.11,vm2"));
    let pid2: u64 = read(l3dir.join("dnsmasq.pid")).parse().unwrap();
    assert!(alive(pid2) && !alive(pid1));
    assert_eq!(dhcp_client(&netns, &peer, "2"), None, "the released MAC gets nothing");

    // Release everything: nothing is left.
    let r: Deleted =
        a.ok(PATH_NETWORK_RELEASE, json!({"taps": [tap], "dhcp": [l3], "bridges": [br1.clone(), br2.clone()]})).await;
    assert!(r.deleted);
    assert!(!exists(&tap) && !exists(&br1) && !exists(&br2) && !exists(&vlan_if));
    assert!(exists(&d1) && master(&d1).is_none() && exists(&d2));
    assert!(!alive(pid2) && !l3dir.exists());
    let r: Deleted = a.ok(PATH_NETWORK_RELEASE, json!({"taps": [tap], "dhcp": [l3], "bridges": [br1]})).await;
    assert!(!r.deleted, "releasing again finds nothing");
    a.shutdown().await;
}

#[tokio::test]
async fn a_vm_nic_on_a_prepared_tap() {
    if !is_root() {
        eprintln!("SKIP vm nic: needs root (taps)");
        return;
    }
    if !require("vm nic", &[("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")]) {
        return;
    }
    let n = std::process::id() % 1000;
    let (dummy, tap) = (format!("rzt{n}d"), format!("rzt{n}n"));
    let br = format!("br_{dummy}");
    let mut links = Links { links: vec![br.clone(), tap.clone()], netns: format!("rztest{n}x") };
    links.links.extend(make_uplink(&dummy));
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(dir.path().to_path_buf());
    let a = Agent::start(dir.path()).await;
    let vm = uuid();
    let mac = "fa:16:3e:ab:cd:01";
    let _: NetworkPrepared = a
        .ok(
            PATH_NETWORK_PREPARE,
            json!({"bridges": [{"l2Uuid": uuid(), "physicalInterface": dummy}],
                   "taps": [{"vmUuid": vm, "tapName": tap, "mac": mac, "bridgeName": br}]}),
        )
        .await;
    let root = dir.path().join("root.qcow2").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &root, "16M"]);
    let st: VmState = a
        .ok(
            PATH_VM_START,
            json!({"vmUuid": vm, "cpuNum": 1, "memorySize": 128 << 20,
                   "rootVolume": {"volumeUuid": vm, "installPath": root, "deviceId": 0},
                   "nics": [{"mac": mac, "tapName": tap, "deviceId": 0}]}),
        )
        .await;
    assert_eq!(st.state, VM_RUNNING);
    // QEMU holds the tap: the kernel shows the carrier up once a process attaches.
    assert_eq!(read(format!("/sys/class/net/{tap}/carrier")), "1");
    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm})).await;
    let _: Deleted = a.ok(PATH_NETWORK_RELEASE, json!({"taps": [tap], "bridges": [br]})).await;
    assert!(!exists(&tap) && !exists(&br) && master(&dummy).is_none());
    a.shutdown().await;
}
