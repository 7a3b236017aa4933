//! Guests outliving or dying under their management: a guest whose QEMU dies becomes Stopped
//! through the host tracker (its capacity given back, startable again); guests keep running
//! through a kill -9 of their agent and are still controlled through the API once it is back.
//! Skips with a reason where QEMU guests cannot run (see tests/common/kvm.rs).
mod common;
use common::agent::Agent;
use common::kvm::{qemu_pids, uuid, KvmCloud};
use serde_json::json;
use std::time::Duration;

async fn host_cpu(c: &KvmCloud) -> i64 {
    c.s.query(&format!("/hosts/{}", c.host)).await[0]["availableCpuCapacity"].as_i64().expect("availableCpuCapacity")
}

#[tokio::test]
async fn a_guest_that_dies_becomes_stopped() {
    let Some(c) = KvmCloud::setup("kvm_lifecycle", "d").await else { return };
    c.s.ok(
        "PUT",
        "/global-configurations/host/ping.interval/actions",
        Some(json!({"updateGlobalConfig": {"value": "1"}})),
    )
    .await;
    let cpu_before = host_cpu(&c).await;
    let vm = c.create_vm("dies", json!({})).await;
    let vu = uuid(&vm);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(host_cpu(&c).await, cpu_before - 1);
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    let pids = qemu_pids(&vu);
    assert_eq!(pids.len(), 1, "one QEMU runs the guest");

    // The guest dies (not through any API): the tracker finds it and the VM becomes Stopped.
    assert!(common::kvm::sh(&["kill", "-9", &pids[0].to_string()]));
    let st = c.wait_state(&vu, "Stopped", Duration::from_secs(60)).await;
    assert!(st["hostUuid"].is_null(), "{st}");
    assert_eq!(st["lastHostUuid"], c.host.as_str(), "{st}");
    assert_eq!(host_cpu(&c).await, cpu_before, "the died guest's CPU is given back");
    assert_eq!(c.agent.vm_status(&vu).await["stoppedBy"], "exited");

    // It starts again like any stopped VM.
    let r = c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running", "{r}");
    assert_eq!(qemu_pids(&vu).len(), 1);
    // A guest stopped through the API is not mistaken for a died one by later tracker rounds.
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.s.query(&format!("/vm-instances/{vu}")).await[0]["state"], "Stopped");
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.s.query(&format!("/vm-instances/{vu}")).await[0]["state"], "Running", "a running guest stays Running");

    c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(qemu_pids(&vu).is_empty());
}

#[tokio::test]
async fn guests_survive_a_killed_agent_and_stay_controllable() {
    let Some(mut c) = KvmCloud::setup("kvm_lifecycle", "e").await else { return };
    let vm = c.create_vm("survives", json!({})).await;
    let vu = uuid(&vm);
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    let pids = qemu_pids(&vu);
    assert_eq!(pids.len(), 1);

    // kill -9 of the agent, then a new agent on the same port and data directory.
    let port = c.agent.port;
    c.agent.stop();
    assert_eq!(qemu_pids(&vu), pids, "the guest keeps running without its agent");
    let again = Agent::start(c.agent_dir.path(), port).await;
    // The old handle's drop would end the guests of the data directory: forget it instead.
    std::mem::forget(std::mem::replace(&mut c.agent, again));
    let st = c.agent.vm_status(&vu).await;
    assert_eq!(st["state"], "Running", "{st}");
    assert_eq!(st["pid"], pids[0], "the new agent re-adopted the same QEMU: {st}");

    // Still controlled through the API: reboot, stop, start, destroy.
    let r = c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"rebootVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running", "{r}");
    let r =
        c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(r["inventory"]["state"], "Stopped", "{r}");
    assert!(qemu_pids(&vu).is_empty(), "stop ended the re-adopted guest");
    let r = c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running", "{r}");
    assert_eq!(qemu_pids(&vu).len(), 1);
    c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    assert!(qemu_pids(&vu).is_empty());
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
}

#[tokio::test]
async fn a_grace_stop_powers_the_guest_off_through_acpi() {
    let Some(c) = KvmCloud::setup("kvm_lifecycle", "g").await else { return };
    let vm = c.create_vm("graceful", json!({})).await;
    let vu = uuid(&vm);
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    // The default stop is a grace stop: ACPI power button first; this guest answers it.
    let r = c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Stopped", "{r}");
    assert!(qemu_pids(&vu).is_empty());
    let st = c.agent.vm_status(&vu).await;
    assert_eq!(st["stoppedBy"], "graceful", "the guest powered itself off: {st}");
    let log = std::fs::read_to_string(c.serial_log(&vu).await).expect("serial log");
    assert!(log.contains("RZSTACK-GUEST-POWEROFF"), "the guest saw the power button:\n{log}");
    c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
}
