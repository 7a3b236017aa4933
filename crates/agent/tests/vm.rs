//! VMs through the agent's HTTP API: a real QEMU per VM (TCG) booting a blank qcow2 (no OS:
//! the firmware runs and finds nothing, which is enough to check the process, QMP, the serial
//! log, stops and re-adoption). Skips with a message when QEMU or qemu-img are missing.
mod common;
use common::*;
use rzstack_api::agent::*;
use serde_json::{json, Value};

const TOOLS: &[(&str, &str)] = &[("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")];

struct Vm {
    uuid: String,
    root: String,
}

fn blank_vm(dir: &std::path::Path) -> Vm {
    let uuid = uuid();
    let root = dir.join(format!("ps/{uuid}.qcow2")).to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.join("ps")).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", &root, "64M"]);
    Vm { uuid, root }
}

fn start_body(vm: &Vm, extra: Value) -> Value {
    let mut b = json!({"vmUuid": vm.uuid, "name": "t", "cpuNum": 1, "memorySize": 128 << 20,
        "rootVolume": {"volumeUuid": vm.uuid, "installPath": vm.root, "deviceId": 0}});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    b
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

#[tokio::test]
async fn start_status_stop_grace_then_forced_reboot_destroy() {
    if !require("vm lifecycle", TOOLS) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let vm = blank_vm(d.path());
    let data = d.path().join("ps/data.qcow2").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &data, "16M"]);
    let st: VmState = a
        .ok(
            PATH_VM_START,
            start_body(
                &vm,
                json!({"virtio": false, "dataVolumes": [{"volumeUuid": uuid(), "installPath": data, "deviceId": 1}]}),
            ),
        )
        .await;
    assert_eq!((st.state.as_str(), st.qmp_status.as_deref()), (VM_RUNNING, Some("running")));
    let pid = st.pid.expect("pid");
    assert!(alive(pid as u64));
    let cl = cmdline(pid);
    assert!(cl.contains("-accel") || cl.contains("accel=tcg"), "{cl}");
    assert!(cl.contains("ide-hd") && cl.contains("-m 128") && cl.contains(&vm.root), "{cl}");
    let serial = st.serial_log.clone().expect("serial log");
    assert!(serial.ends_with(&format!("vms/{}/serial.log", vm.uuid)), "{serial}");
    assert!(std::path::Path::new(&serial).exists());

    // Starting a running VM answers it as it is.
    let again: VmState = a.ok(PATH_VM_START, start_body(&vm, json!({}))).await;
    assert_eq!(again.pid, Some(pid));

    // The root volume is locked while the VM runs: no delete, no snapshot.
    let e = a.fails(PATH_VOLUME_DELETE, json!({"installPath": vm.root})).await;
    assert!(e.contains("in use"), "{e}");
    assert!(std::path::Path::new(&vm.root).exists());

    // Nothing in the guest answers the ACPI button: the grace period runs out, then forced.
    let st: VmState = a.ok(PATH_VM_STOP, json!({"vmUuid": vm.uuid, "mode": "grace", "timeoutSecs": 1})).await;
    assert_eq!((st.state.as_str(), st.stopped_by.as_deref(), st.pid), (VM_STOPPED, Some("forced"), None));
    assert!(!alive(pid as u64), "QEMU is gone");
    // Stopping a stopped VM is success.
    let st: VmState = a.ok(PATH_VM_STOP, json!({"vmUuid": vm.uuid, "mode": "cold"})).await;
    assert_eq!(st.state, VM_STOPPED);

    // Start (virtio this time), reboot = a new QEMU with the same definition.
    let st: VmState = a.ok(PATH_VM_START, start_body(&vm, json!({}))).await;
    let pid2 = st.pid.expect("pid");
    assert!(cmdline(pid2).contains("virtio-blk-pci"));
    let st: VmState = a.ok(PATH_VM_REBOOT, json!({"vmUuid": vm.uuid, "mode": "cold"})).await;
    let pid3 = st.pid.expect("pid");
    assert_eq!(st.state, VM_RUNNING);
    assert_ne!(pid3, pid2);
    assert!(!alive(pid2 as u64) && alive(pid3 as u64));

    // Destroy: no process, no run directory; the agent no longer knows the VM.
    let st: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm.uuid})).await;
    assert_eq!(st.state, VM_UNKNOWN);
    assert!(!alive(pid3 as u64));
    assert!(!d.path().join("vms").join(&vm.uuid).exists());
    let list: VmStatusList = a.ok(PATH_VM_STATUS, json!({})).await;
    assert!(list.vms.is_empty(), "{list:?}");
    // The volume is free again.
    let del: Deleted = a.ok(PATH_VOLUME_DELETE, json!({"installPath": vm.root})).await;
    assert!(del.deleted);
    a.shutdown().await;
}

#[tokio::test]
async fn bad_start_commands_start_nothing() {
    if !require("vm bad input", TOOLS) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let vm = blank_vm(d.path());
    let e = a.fails(PATH_VM_START, start_body(&vm, json!({"memorySize": 1000}))).await;
    assert!(e.contains("memorySize"), "{e}");
    let e = a.fails(PATH_VM_START, start_body(&vm, json!({"bootOrder": ["CdRom"]}))).await;
    assert!(e.contains("no cdrom"), "{e}");
    let missing = Vm { uuid: vm.uuid.clone(), root: "/nonexistent/root.qcow2".into() };
    let e = a.fails(PATH_VM_START, start_body(&missing, json!({}))).await;
    assert!(e.contains("does not exist"), "{e}");
    // A NIC whose tap network/prepare has not made.
    let e = a
        .fails(
            PATH_VM_START,
            start_body(&vm, json!({"nics": [{"mac": "fa:16:3e:00:00:09", "tapName": "rznotap0", "deviceId": 0}]})),
        )
        .await;
    assert!(e.contains("the tap rznotap0 does not exist"), "{e}");
    // QEMU itself refusing is reported with QEMU's words.
    let e = a.fails(PATH_VM_START, start_body(&vm, json!({"cpuNum": 500}))).await;
    assert!(e.contains("QEMU did not start") && e.contains("CPU"), "{e}");
    let list: VmStatusList = a.ok(PATH_VM_STATUS, json!({"vmUuids": [vm.uuid]})).await;
    assert_eq!(list.vms[0].state, VM_STOPPED);
    a.shutdown().await;
}

#[tokio::test]
async fn running_vms_are_readopted_after_an_agent_restart() {
    if !require("vm re-adoption", TOOLS) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let (v1, v2) = (blank_vm(d.path()), blank_vm(d.path()));
    let s1: VmState = a.ok(PATH_VM_START, start_body(&v1, json!({}))).await;
    let s2: VmState = a.ok(PATH_VM_START, start_body(&v2, json!({}))).await;
    let (p1, p2) = (s1.pid.unwrap(), s2.pid.unwrap());
    a.shutdown().await;
    assert!(alive(p1 as u64) && alive(p2 as u64), "guests outlive the agent");

    // While the agent is away, one guest dies.
    let st = std::process::Command::new("kill").args(["-9", &p2.to_string()]).status().unwrap();
    assert!(st.success());
    for _ in 0..100 {
        if !alive(p2 as u64) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let b = Agent::start(d.path()).await;
    let list: VmStatusList = b.ok(PATH_VM_STATUS, json!({})).await;
    let by: std::collections::HashMap<_, _> = list.vms.iter().map(|v| (v.vm_uuid.clone(), v.clone())).collect();
    let r1 = &by[&v1.uuid];
    assert_eq!((r1.state.as_str(), r1.pid, r1.qmp_status.as_deref()), (VM_RUNNING, Some(p1), Some("running")));
    let r2 = &by[&v2.uuid];
    assert_eq!((r2.state.as_str(), r2.stopped_by.as_deref()), (VM_STOPPED, Some("exited")));

    // The re-adopted guest is still controllable.
    let st: VmState = b.ok(PATH_VM_STOP, json!({"vmUuid": v1.uuid, "mode": "cold"})).await;
    assert_eq!(st.state, VM_STOPPED);
    assert!(!alive(p1 as u64));
    for v in [&v1, &v2] {
        let _: VmState = b.ok(PATH_VM_DESTROY, json!({"vmUuid": v.uuid})).await;
    }
    b.shutdown().await;
}

#[tokio::test]
async fn tpm_through_swtpm() {
    if !require("vm tpm", TOOLS) || !require("vm tpm", &[("swtpm", "swtpm")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let vm = blank_vm(d.path());
    let st: VmState = a.ok(PATH_VM_START, start_body(&vm, json!({"tpm": true}))).await;
    let pid = st.pid.unwrap();
    assert!(cmdline(pid).contains("tpm-crb"));
    let swtpm_pid: u64 =
        std::fs::read_to_string(d.path().join(format!("vms/{}/swtpm.pid", vm.uuid))).unwrap().trim().parse().unwrap();
    assert!(alive(swtpm_pid));
    // QEMU sees the TPM.
    let sock = d.path().join(format!("vms/{}/qmp.sock", vm.uuid));
    let mut q = rzstack_agent::qmp::Qmp::connect(&sock).await.unwrap();
    let tpms = q.execute("query-tpm", None).await.unwrap();
    assert_eq!(tpms[0]["model"], "tpm-crb", "{tpms}");
    assert_eq!(tpms[0]["options"]["type"], "emulator", "{tpms}");
    drop(q);
    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm.uuid})).await;
    assert!(!alive(pid as u64));
    for _ in 0..100 {
        if !alive(swtpm_pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!alive(swtpm_pid), "swtpm goes with its VM");
    a.shutdown().await;
}

#[tokio::test]
async fn iso_as_cdrom_boots_first_when_asked() {
    if !require("vm cdrom", TOOLS) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let vm = blank_vm(d.path());
    let iso = d.path().join("cd.iso").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "raw", &iso, "1M"]);
    let st: VmState =
        a.ok(PATH_VM_START, start_body(&vm, json!({"cdrom": iso, "bootOrder": ["CdRom", "HardDisk"]}))).await;
    let cl = cmdline(st.pid.unwrap());
    assert!(cl.contains("ide-cd,drive=cd0,bus=ide.0,id=cdrom0,bootindex=1"), "{cl}");
    assert!(cl.contains("virtio-blk-pci,drive=disk0,id=vd0,bootindex=2"), "{cl}");
    let sock = d.path().join(format!("vms/{}/qmp.sock", vm.uuid));
    let mut q = rzstack_agent::qmp::Qmp::connect(&sock).await.unwrap();
    let blocks = q.execute("query-block", None).await.unwrap();
    let cd = blocks.as_array().unwrap().iter().find(|b| b["qdev"].as_str().is_some_and(|s| s.contains("cdrom0")));
    let cd = cd.unwrap_or_else(|| panic!("no cdrom in {blocks}"));
    assert_eq!(cd["inserted"]["file"], iso.as_str(), "{cd}");
    assert_eq!(cd["inserted"]["ro"], true, "{cd}");
    drop(q);
    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm.uuid})).await;
    a.shutdown().await;
}

#[tokio::test]
async fn snapshots_of_a_running_vm_are_made_by_its_qemu() {
    if !require("vm live snapshot", TOOLS) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let _kill = KillLeftovers(d.path().to_path_buf());
    let a = Agent::start(d.path()).await;
    let vm = blank_vm(d.path());
    let w = std::process::Command::new("qemu-io").args(["-c", "write -P 5 1M 2M", &vm.root]).output().unwrap();
    assert!(w.status.success());
    let _: VmState = a.ok(PATH_VM_START, start_body(&vm, json!({}))).await;
    let snap = d.path().join("snaps/s1.qcow2").to_string_lossy().into_owned();
    let body = json!({"snapshotUuid": uuid(), "volumeInstallPath": vm.root, "installPath": snap});
    // Without the VM, the file is in use and refused.
    let e = a.fails(PATH_VOLUME_SNAPSHOT, body.clone()).await;
    assert!(e.contains("in use"), "{e}");
    assert!(!std::path::Path::new(&snap).exists());
    let mut with_vm = body.clone();
    with_vm["vmUuid"] = vm.uuid.clone().into();
    let info: VolumeInfo = a.ok(PATH_VOLUME_SNAPSHOT, with_vm).await;
    assert_eq!((info.backing_file.clone(), info.size), (None, 64 << 20));
    let cmp = std::process::Command::new("qemu-img").args(["compare", "-U", &vm.root, &snap]).output().unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stdout));
    // The VM kept running.
    let list: VmStatusList = a.ok(PATH_VM_STATUS, json!({"vmUuids": [vm.uuid]})).await;
    assert_eq!(list.vms[0].state, VM_RUNNING);
    // A path that is not one of its disks.
    let mut other = body;
    other["vmUuid"] = vm.uuid.clone().into();
    other["volumeInstallPath"] = "/elsewhere/x.qcow2".into();
    other["installPath"] = d.path().join("snaps/s2.qcow2").to_string_lossy().into_owned().into();
    let e = a.fails(PATH_VOLUME_SNAPSHOT, other).await;
    assert!(e.contains("is not a disk of VM"), "{e}");
    let _: VmState = a.ok(PATH_VM_DESTROY, json!({"vmUuid": vm.uuid})).await;
    a.shutdown().await;
}
