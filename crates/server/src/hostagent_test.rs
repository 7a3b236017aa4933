use super::*;

#[tokio::test]
async fn unreachable_agent_is_reported() {
    let a = KvmAgentClient::with_base("http://127.0.0.1:1".into(), "t");
    let cmd = ConnectCmd { version: 1, host_uuid: "h".into(), management_node_uuid: "m".into() };
    let e = a.connect(&cmd).await.unwrap_err();
    assert!(matches!(e, AgentError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
}

#[test]
fn debug_hides_the_token() {
    let a = KvmAgentClient::with_base("http://h:7070".into(), "s3cret");
    assert!(!format!("{a:?}").contains("s3cret"));
}

#[tokio::test]
async fn simulator_validates_and_accounts() {
    let a = SimulatorAgent { cpu_capacity: 4, memory_capacity: 1 << 30, architecture: "x86_64".into() };
    let vm = "5e1f0c3a9b2d4e6f8a7b6c5d4e3f2a1b".to_string();
    let vol = format!("/ps/rootVolumes/acct-a/vol-{vm}/{vm}.qcow2");
    let bad = VolumeCreateCmd {
        version: 1,
        volume_uuid: vm.clone(),
        install_path: "relative.qcow2".into(),
        size: 1 << 20,
        backing_file: None,
        provisioning: Provisioning::ThickProvisioning,
    };
    let e = a.create_volume(&bad).await.unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    assert!(!simulated().volumes.contains_key("relative.qcow2"));
    let good = VolumeCreateCmd { install_path: vol.clone(), ..bad };
    let v = a.create_volume(&good).await.unwrap();
    assert_eq!((v.size, v.actual_size), (1 << 20, 1 << 20));
    assert_eq!(simulated().volumes.get(&vol), Some(&v));

    let start: VmStartCmd = serde_json::from_value(serde_json::json!({
        "version": 1, "vmUuid": vm, "cpuNum": 1, "memorySize": 128 << 20,
        "rootVolume": {"volumeUuid": vm, "installPath": vol, "deviceId": 0}
    }))
    .unwrap();
    assert_eq!(a.start_vm(&start).await.unwrap().state, VM_RUNNING);
    let stop =
        VmStopCmd { version: 1, vm_uuid: vm.clone(), mode: StopMode::Grace, timeout_secs: None, boot_order: None };
    let st = a.stop_vm(&stop).await.unwrap();
    assert_eq!((st.state.as_str(), st.stopped_by.as_deref()), (VM_STOPPED, Some("graceful")));
    let status = a.vm_status(&VmStatusCmd { version: 1, vm_uuids: vec![vm.clone()] }).await.unwrap();
    assert_eq!(status.vms[0].state, VM_STOPPED);
    a.destroy_vm(&VmDestroyCmd { version: 1, vm_uuid: vm.clone() }).await.unwrap();
    assert!(!simulated().vms.contains_key(&vm));
    let mut bad_start = start.clone();
    bad_start.memory_size = 1000;
    assert!(a.start_vm(&bad_start).await.is_err());
    assert!(!simulated().vms.contains_key(&vm));
    assert!(simulated().calls.get(PATH_VM_START).copied().unwrap_or(0) >= 1);
}
