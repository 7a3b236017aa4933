//! Saga steps that call a host agent run outside the database write transaction: another
//! request's write completes while a VM's instantiate step waits for its agent; a crash after
//! the agent acted but before the step's completion was recorded is undone at restart (on the
//! agent too), and the replayed job creates the VM once.
mod common;

use common::agent::Agent;
use common::kvm::walk;
use common::{assert_error, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GB: i64 = 1 << 30;
const MB: i64 = 1 << 20;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

struct Topo {
    cluster: String,
    host: String,
    ps: String,
    image: String,
    offering: String,
    l3: String,
    _dir: tempfile::TempDir,
}

fn qcow2(dir: &Path) -> PathBuf {
    let qcow = dir.join("t.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", qcow.to_str().expect("path"), "64M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    qcow
}

/// An L2 NoVlan network on `interface` attached to the cluster, an L3 on it with 192.168.10.10-20.
async fn network(srv: &Server, zone: &str, cluster: &str, interface: &str) -> String {
    let l2 = s(&srv
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": interface}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/l2-networks/{l2}/clusters/{cluster}"), None).await;
    let l3 = s(&srv.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3", "l2NetworkUuid": l2}}))).await
        ["inventory"]["uuid"]);
    srv.ok(
        "POST",
        &format!("/l3-networks/{l3}/ip-ranges"),
        Some(json!({"params": {"name": "r", "startIp": "192.168.10.10", "endIp": "192.168.10.20",
            "netmask": "255.255.255.0", "gateway": "192.168.10.1"}})),
    )
    .await;
    l3
}

/// The shared simulated cloud with one simulator host (tests/common/sim.rs) and an L3.
async fn topology(srv: &Server) -> Topo {
    let t = common::sim::topology(srv, 1).await;
    let l3 = network(srv, &t.zone, &t.cluster, "eth9").await;
    let host = t.hosts[0].clone();
    Topo { cluster: t.cluster, host, ps: t.ps, image: t.image, offering: t.offering, l3, _dir: t._dir }
}

fn create(t: &Topo, extra: Value) -> Value {
    let mut p = json!({"name": "vm1", "instanceOfferingUuid": t.offering, "imageUuid": t.image,
        "clusterUuid": t.cluster, "l3NetworkUuids": [t.l3]});
    for (k, v) in extra.as_object().expect("object") {
        p[k] = v.clone();
    }
    json!({"params": p})
}

/// (host available cpu, memory; PS available capacity; used IPs of the L3)
async fn usage(srv: &Server, t: &Topo) -> (i64, i64, i64, Value) {
    let h = &srv.query(&format!("/hosts/{}", t.host)).await[0];
    let ps = srv.query(&format!("/primary-storage/{}", t.ps)).await[0]["availableCapacity"].as_i64().expect("ps");
    let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={}", t.l3)).await;
    (
        h["availableCpuCapacity"].as_i64().expect("cpu"),
        h["availableMemoryCapacity"].as_i64().expect("mem"),
        ps,
        cap.body["usedIpAddressNumber"].clone(),
    )
}

/// Submit an async API; returns its job location.
async fn submit(srv: &Server, path: &str, body: Value) -> String {
    let r = srv.request("POST", path, Some(body), Some(&srv.session.clone()), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let job = s(&r.body["location"]).rsplit('/').next().expect("job").to_string();
    format!("/api-jobs/{job}")
}

/// Wait until the server process ended (a crash hook fired).
async fn wait_gone(srv: &Server) {
    for _ in 0..1200 {
        if srv.http.get(format!("{}/management-nodes/ready", srv.base)).send().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the crash hook did not stop the server");
}

/// While the instantiate step waits for the (simulated) agent, another request's write — a
/// CreateZone — completes: the step holds no write transaction. On SQLite, whose writers
/// queue on one lock, that zone would wait for the agent if the step ran inside its
/// transaction. The agent here waits for a gate file, so the order is certain.
#[tokio::test]
async fn writes_complete_while_instantiate_waits_for_the_agent() {
    let gate_dir = tempfile::tempdir().expect("tempdir");
    let gate = gate_dir.path().join("open");
    let srv =
        Server::start_with_env(vec![("RZSTACK_TEST_AGENT_GATE".into(), gate.to_string_lossy().into_owned())]).await;
    std::fs::write(&gate, b"").expect("gate");
    let t = topology(&srv).await;
    std::fs::remove_file(&gate).expect("close the gate");

    let loc = submit(&srv, "/vm-instances", create(&t, json!({}))).await;
    // the steps before instantiate are done once the CD-ROM exists (the last of them)
    let mut reached = false;
    for _ in 0..1200 {
        let vms = srv.query("/vm-instances").await;
        if vms.first().is_some_and(|v| v["vmCdRoms"].as_array().is_some_and(|c| !c.is_empty())) {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reached, "the creation did not reach its CD-ROM step");
    let vm = srv.query("/vm-instances").await[0].clone();
    assert_eq!(vm["state"], "Starting", "{vm}");

    // a write of another request goes through while the agent is busy
    let zone = srv.create_zone("other").await;
    assert_eq!(zone["name"], "other");
    assert_eq!(srv.query(&format!("/zones/{}", s(&zone["uuid"]))).await.len(), 1);
    let still = srv.request("GET", &loc, None, None, &[]).await;
    assert_eq!(still.status, 202, "the creation is still waiting for its agent: {}", still.text);
    assert_eq!(srv.query("/vm-instances").await[0]["state"], "Starting");

    std::fs::write(&gate, b"").expect("open the gate");
    let done = srv.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["inventory"]["state"], "Running");
    assert_eq!(done.body["inventory"]["hostUuid"], t.host.as_str());
}

/// A crash after the agent instantiated the VM but before the step's completion record: the
/// restart unwinds the saga from the started remote step, the replayed job creates the VM once
/// (one VM, one volume, one IP, capacities taken once).
#[tokio::test]
async fn crash_between_the_agent_and_the_completion_record_is_unwound() {
    let mut srv =
        Server::start_with_env(vec![("RZSTACK_TEST_CRASH_IN_STEP".into(), "instantiate-on-host".into())]).await;
    let t = topology(&srv).await;
    let before = usage(&srv, &t).await;
    let loc = submit(&srv, "/vm-instances", create(&t, json!({}))).await;
    wait_gone(&srv).await;
    srv.extra_env.clear();
    srv.restart().await;
    let done = srv.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["inventory"]["state"], "Running");
    assert_eq!(srv.query("/vm-instances").await.len(), 1);
    assert_eq!(srv.query("/volumes").await.len(), 1);
    assert_eq!(srv.query("/vm-instances/nics").await.len(), 1);
    let after = usage(&srv, &t).await;
    assert_eq!((after.0, after.1, after.2), (before.0 - 1, before.1 - GB, before.2 - 64 * MB), "taken once");
    assert_eq!(after.3, 1, "one IP in use");
}

/// A failure at the planning step (before the agent) and at the remote step (before it
/// starts) leaves nothing; every undo runs twice (the fault hook), the remote one included.
#[tokio::test]
async fn failures_around_the_remote_step_leave_nothing() {
    for step in ["plan-on-host", "instantiate-on-host", "finish"] {
        let srv = Server::start_with_env(vec![("RZSTACK_TEST_FAIL_STEP".into(), step.into())]).await;
        let t = topology(&srv).await;
        let before = usage(&srv, &t).await;
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({})))).await;
        assert_error(&e, "SYS.1006", &format!("test fault injected at saga step[{step}]"));
        assert!(srv.query("/vm-instances").await.is_empty(), "no VM after a failure at {step}");
        assert!(srv.query("/volumes").await.is_empty(), "no volume after a failure at {step}");
        assert_eq!(usage(&srv, &t).await, before, "after a failure at {step}");
    }
}

fn root_volume_files(ps_dir: &Path) -> Vec<PathBuf> {
    walk(ps_dir).into_iter().filter(|p| p.to_string_lossy().contains("/rootVolumes/")).collect()
}

/// On a KVM host (a real `rzstack agent`, CreateStopped: the agent caches the image and creates
/// the root volume file, no QEMU): a crash after the agent created the file but before the
/// step's completion record. At restart the unwinding deletes that file on the host, and the
/// replayed job creates the VM again: exactly one root volume file is left, the VM's.
#[tokio::test]
async fn crash_after_the_kvm_agent_acted_deletes_its_work_at_restart() {
    if !common::kvm::have("qemu-img") {
        eprintln!("SKIP: qemu-img is not installed");
        return;
    }
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let ps_dir = tempfile::tempdir().expect("tempdir");
    let bs_dir = tempfile::tempdir().expect("tempdir");
    let img_dir = tempfile::Builder::new().prefix("rzsaga").tempdir().expect("tempdir");
    let agent = Agent::start(agent_dir.path(), 0).await;
    let port = ("RZSTACK_KVM_AGENT_PORT".to_string(), agent.port.to_string());
    let mut srv =
        Server::start_with_env(vec![port.clone(), ("RZSTACK_TEST_CRASH_IN_STEP".into(), "instantiate-on-host".into())])
            .await;
    let zone = s(&srv.create_zone("z").await["uuid"]);
    let cluster = s(&srv
        .ok("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}})))
        .await["inventory"]["uuid"]);
    let h = srv
        .ok(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "h", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                "username": "root", "password": agent.token()}})),
        )
        .await;
    assert_eq!(h["inventory"]["status"], "Connected", "{h}");
    let ps = s(&srv
        .ok(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "local", "url": ps_dir.path(), "zoneUuid": zone}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{cluster}/primary-storage/{ps}"), None).await;
    let bs = s(&srv
        .ok(
            "POST",
            "/backup-storage/image-store",
            Some(json!({"params": {"name": "store", "url": bs_dir.path(), "hostname": "127.0.0.1",
                "username": "root", "password": "p", "sshPort": 22}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/zones/{zone}/backup-storage/{bs}"), None).await;
    let qcow = qcow2(img_dir.path());
    let image = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "img", "url": format!("file://{}", qcow.display()), "format": "qcow2",
                "backupStorageUuids": [bs], "platform": "Linux", "architecture": "x86_64"}})),
        )
        .await["inventory"]["uuid"]);
    let offering = s(&srv
        .ok(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "tiny", "cpuNum": 1, "memorySize": 256 * MB}})),
        )
        .await["inventory"]["uuid"]);
    let l3 = network(&srv, &zone, &cluster, "rzsaga0").await;

    let loc = submit(
        &srv,
        "/vm-instances",
        json!({"params": {"name": "vm", "instanceOfferingUuid": offering, "imageUuid": image,
            "l3NetworkUuids": [l3], "strategy": "CreateStopped"}}),
    )
    .await;
    wait_gone(&srv).await;
    let first = root_volume_files(ps_dir.path());
    assert_eq!(first.len(), 1, "the agent created the root volume before the crash: {first:?}");

    srv.extra_env = vec![port];
    srv.restart().await;
    let done = srv.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let vm = &done.body["inventory"];
    assert_eq!(vm["state"], "Stopped", "{vm}");
    let vols = srv.query("/volumes").await;
    assert_eq!(vols.len(), 1, "{vols:?}");
    let files = root_volume_files(ps_dir.path());
    assert_eq!(files, vec![PathBuf::from(s(&vols[0]["installPath"]))], "only the VM's root volume file is left");
    assert!(!first[0].exists(), "the first attempt's file was deleted by the unwinding");
    drop(agent);
}

/// Starting a Stopped VM is a saga too (host and addresses in a transaction, the agent outside
/// it): a failure at any of its steps leaves the VM Stopped where it was, capacity given back.
#[tokio::test]
async fn start_of_a_stopped_vm_failing_at_each_step_leaves_it_stopped() {
    for step in ["allocate-host-for-start", "start-on-host", "mark-running"] {
        let srv = Server::start_with_env(vec![("RZSTACK_TEST_FAIL_STEP".into(), step.into())]).await;
        let t = topology(&srv).await;
        let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"strategy": "CreateStopped"})))).await;
        let uuid = s(&vm["inventory"]["uuid"]);
        assert_eq!(vm["inventory"]["state"], "Stopped");
        let before = (usage(&srv, &t).await, srv.query(&format!("/vm-instances/{uuid}")).await[0].clone());
        let e = srv.fails("PUT", &format!("/vm-instances/{uuid}/actions"), Some(json!({"startVmInstance": {}}))).await;
        assert_error(&e, "VM.1001", &format!("test fault injected at saga step[{step}]"));
        let after = srv.query(&format!("/vm-instances/{uuid}")).await[0].clone();
        assert_eq!(after["state"], "Stopped", "after a failure at {step}");
        assert_eq!(after["hostUuid"], Value::Null);
        assert_eq!(after["lastHostUuid"], before.1["lastHostUuid"]);
        assert_eq!(usage(&srv, &t).await, before.0, "after a failure at {step}");
    }
}
