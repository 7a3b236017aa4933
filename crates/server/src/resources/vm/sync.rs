//! Guests that die on their host (upstream's VM state tracing: a VM found stopped on its host
//! while the database says Running becomes Stopped).
//!
//! After each successful ping of a KVM host, the host tracker asks the agent for the state of
//! the VMs the database has Running there. A guest whose QEMU is gone although nobody asked
//! it to stop (the agent reports it stopped with no `stoppedBy`, or `exited` once cleaned up)
//! died: its agent is told to stop it (which ends its swtpm and records `exited`), then the VM
//! becomes Stopped and its host capacity is given back, exactly as a StopVmInstance does.
//! Each died guest is handled in the VM's action queue (after an API action in progress on it),
//! and only while the database still has it Running on that host; guests stopped by a command
//! (`graceful` / `forced`) are left to that command.

use super::*;
use crate::hostagent::agent_for_host;
use rzstack_api::agent::{StopMode, VmStatusCmd, VmStopCmd, PROTOCOL_VERSION, VM_STOPPED};

/// Whether an agent's VM state says the guest ended without being asked to.
fn died(st: &rzstack_api::agent::VmState) -> bool {
    st.state == VM_STOPPED && st.stopped_by.as_deref().is_none_or(|b| b == "exited")
}

/// Compare the Running VMs of `host` with what its agent runs; died guests become Stopped.
/// Returns the uuids of the VMs it stopped.
pub async fn sync_host(app: &App, host: &str) -> Result<Vec<String>> {
    let rows = app
        .db
        .fetch_all("SELECT uuid FROM vm_instance WHERE host_uuid = $1 AND state = 'Running'", &[Val::from(host)])
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let vm_uuids = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<Vec<_>, _>>()?;
    let agent = agent_for_host(&app.db, host).await?;
    let list = agent
        .vm_status(&VmStatusCmd { version: PROTOCOL_VERSION, vm_uuids })
        .await
        .map_err(|e| Error::operr(format!("cannot read the VM states of host[uuid:{host}]: {e}")))?;
    let mut stopped = Vec::new();
    for st in list.vms.iter().filter(|st| died(st)) {
        let vm = st.vm_uuid.as_str();
        // In the VM's queue, after any API action on it that is in progress.
        let _turn = queue::turn(vm).await;
        let cmd = VmStopCmd {
            version: PROTOCOL_VERSION,
            vm_uuid: vm.to_string(),
            mode: StopMode::Cold,
            timeout_secs: None,
            boot_order: None,
        };
        if let Err(e) = agent.stop_vm(&cmd).await {
            tracing::warn!(vm, host, error = %e, "cleaning up after a died guest failed; marking it Stopped anyway");
        }
        let mut tx = app.db.begin_write().await?;
        // Only if it is still Running on this host (an API may have moved it meanwhile).
        let n = tx
            .execute(
                "UPDATE vm_instance SET state = 'Stopped', last_op_date = $1 \
                 WHERE uuid = $2 AND state = 'Running' AND host_uuid = $3",
                &[Val::I(now_ms()), Val::from(vm), Val::from(host)],
            )
            .await?;
        if n == 1 {
            release_host(&mut tx, vm).await?;
            tx.execute(
                "UPDATE vm_instance SET last_host_uuid = host_uuid, host_uuid = NULL WHERE uuid = $1",
                &[Val::from(vm)],
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(vm, host, "the guest died on its host: the VM is Stopped");
            stopped.push(vm.to_string());
        }
    }
    Ok(stopped)
}
