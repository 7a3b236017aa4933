//! The management node's client (rzstack-server's KvmAgentClient, behind the HostAgent trait)
//! against a real agent: the wire types round-trip, refusals and bad credentials are typed.
mod common;
use common::*;
use rzstack_api::agent::*;
use rzstack_server::hostagent::{AgentError, HostAgent, KvmAgentClient};

#[tokio::test]
async fn host_agent_trait_over_http() {
    if !require("client", &[("qemu-img", "qemu-utils")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let a = Agent::start(d.path()).await;
    let c: Box<dyn HostAgent> = Box::new(KvmAgentClient::with_base(a.base.clone(), TOKEN));

    let path = d.path().join("ps/v.qcow2").to_string_lossy().into_owned();
    let cmd = VolumeCreateCmd {
        version: PROTOCOL_VERSION,
        volume_uuid: uuid(),
        install_path: path.clone(),
        size: 8 << 20,
        backing_file: None,
        provisioning: Provisioning::ThinProvisioning,
    };
    let v = c.create_volume(&cmd).await.expect("create");
    assert_eq!((v.install_path.as_str(), v.size, v.format.as_str()), (path.as_str(), 8 << 20, "qcow2"));
    let cap = c
        .storage_capacity(&StorageCapacityCmd { version: PROTOCOL_VERSION, path: d.path().to_string_lossy().into() })
        .await
        .expect("capacity");
    assert!(cap.total_capacity > 0);
    let st = c.vm_status(&VmStatusCmd { version: PROTOCOL_VERSION, vm_uuids: vec![uuid()] }).await.expect("status");
    assert_eq!(st.vms[0].state, VM_UNKNOWN);

    // The agent's refusal text comes through as Refused.
    let bad = VolumeCreateCmd { size: 0, install_path: d.path().join("ps/w.qcow2").to_string_lossy().into(), ..cmd };
    match c.create_volume(&bad).await {
        Err(AgentError::Refused(e)) => assert!(e.contains("positive size"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let d2 = c.delete_volume(&VolumeDeleteCmd { version: PROTOCOL_VERSION, install_path: path }).await.unwrap();
    assert!(d2.deleted);

    // A wrong token.
    let wrong = KvmAgentClient::with_base(a.base.clone(), "not-the-token");
    match wrong.vm_status(&VmStatusCmd { version: PROTOCOL_VERSION, vm_uuids: vec![] }).await {
        Err(AgentError::Refused(e)) => assert!(e.contains("refused the credentials"), "{e}"),
        other => panic!("expected a credentials refusal, got {other:?}"),
    }
    a.shutdown().await;
}
