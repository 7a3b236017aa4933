-- The canonical JSON of the CreateVmInstance / CreateVmInstanceFromVolumeSnapshot request that
-- made a VM: a retry with the same resourceUuid answers with the VM when it is equal, and is
-- refused when it differs. NULL for VMs made before it was recorded.
ALTER TABLE vm_instance ADD COLUMN create_request TEXT
