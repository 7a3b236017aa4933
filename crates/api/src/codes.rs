//! The upstream error-code catalogue: each code with its fixed description text
//! (upstream `conf/errorCodes/*.xml`). Descriptions never change per occurrence; the
//! per-occurrence text goes into `details`.

/// One upstream error code and its fixed description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub description: &'static str,
}

macro_rules! codes {
    ($($name:ident = $code:literal, $desc:literal;)*) => {
        $(
            #[allow(non_upper_case_globals)] // upstream prefixes such as `vmSchedulingRule`
            pub const $name: Code = Code { code: $code, description: $desc };
        )*
        /// Every code this catalogue knows, for lookups by string.
        pub const ALL: &[Code] = &[$($name),*];
        /// Every constant paired with its Rust name (for the name/code consistency test).
        #[cfg(test)]
        const NAMED: &[(&str, Code)] = &[$((stringify!($name), $name)),*];
    };
}

// Upstream reference: zstackio/zstack master, conf/errorCodes/*.xml (full code = <prefix>.<id>).
codes! {
    // conf/errorCodes/sys.xml (prefix SYS)
    SYS_1000 = "SYS.1000", "An internal error happened in system";
    SYS_1001 = "SYS.1001", "A message or a operation timeout";
    SYS_1002 = "SYS.1002", "Unable to create a resource";
    SYS_1003 = "SYS.1003", "A resource can not be found";
    SYS_1004 = "SYS.1004", "Unable to delete a resource";
    SYS_1005 = "SYS.1005", "Unable to change resource state";
    SYS_1006 = "SYS.1006", "An operation failed";
    SYS_1007 = "SYS.1007", "One or more API argument is invalid";
    SYS_1008 = "SYS.1008", "Unknown message, no service can deal with the message";
    SYS_1009 = "SYS.1009", "No route for message";
    SYS_1010 = "SYS.1010", "Management server is not ready to serve";
    SYS_1011 = "SYS.1011", "The message can not be delivered by Rabbitmq";
    SYS_1012 = "SYS.1012", "The management node is unavailable";
    SYS_1013 = "SYS.1013", "The resource doesn't have capability to proceed an operation";
    SYS_1014 = "SYS.1014", "The operation is not implemented or not supported yet";
    SYS_1015 = "SYS.1015", "Cannot make a HTTP request";
    SYS_1016 = "SYS.1016", "Cannot do an IO operation(e.g. network IO error, file IO error)";
    SYS_1017 = "SYS.1017", "A message or a operation cancelled";

    // conf/errorCodes/identity.xml (prefix ID)
    ID_1000 = "ID.1000", "Unable to authenticate a user";
    ID_1001 = "ID.1001", "The session is invalid, either wrong session id or the session has been expired";
    ID_1002 = "ID.1002", "The user doesn't have permission to perform the operation";
    ID_1003 = "ID.1003", "The user exceeds a quota of a resource";
    ID_1004 = "ID.1004", "Invalid quota operation";
    ID_1005 = "ID.1005", "The user has to change initial password";
    ID_1006 = "ID.1006", "Max number of active sessions exceeded";
    ID_2000 = "ID.2000", "Addition authentication error";
    ID_2001 = "ID.2001", "The user has to login by addition authentication";
    ID_2002 = "ID.2002", "Fail to authenticate a user due to addition authentication";
    ID_2003 = "ID.2003", "Fail to authenticate a user due to remote authentication server error";

    // conf/errorCodes/ldap.xml (prefix LDAP)
    LDAP_1000 = "LDAP.1000", "Failed to connect LDAP/AD server.";
    LDAP_1001 = "LDAP.1001", "There shouldn't be more than one LDAP/AD server.";
    LDAP_1002 = "LDAP.1002", "Cannot find entry on LDAP/AD server.";
    LDAP_1003 = "LDAP.1003", "Cannot bind the same ldap uid to more than one account.";
    LDAP_1004 = "LDAP.1004", "Cannot find the specified account.";
    LDAP_1005 = "LDAP.1005", "Cannot bind ldap uid to admin account.";
    LDAP_1006 = "LDAP.1006", "Test LDAP/AD server connection failed.";
    LDAP_1007 = "LDAP.1007", "Unable to find specified LDAP/AD server record in database.";

    // conf/errorCodes/loginControl.xml (prefix LOGIN_CONTROL)
    LOGIN_CONTROL_1000 = "LOGIN_CONTROL.1000", "Stale password";
    LOGIN_CONTROL_1001 = "LOGIN_CONTROL.1001", "Repeated historical password";
    LOGIN_CONTROL_1002 = "LOGIN_CONTROL.1002", "Target is locked";
    LOGIN_CONTROL_1003 = "LOGIN_CONTROL.1003", "Wrong captcha";
    LOGIN_CONTROL_1004 = "LOGIN_CONTROL.1004", "Request refused";
    LOGIN_CONTROL_1005 = "LOGIN_CONTROL.1005", "Missing captcha";

    // conf/errorCodes/host.xml (prefix HOST)
    HOST_1000 = "HOST.1000", "Unable to add host";
    HOST_1001 = "HOST.1001", "Unable to put host to maintenance mode";
    HOST_1002 = "HOST.1002", "Unable to reconnect host";
    HOST_1003 = "HOST.1003", "An error happened when connecting to host";
    HOST_1004 = "HOST.1004", "Unable to allocate a host for vm";
    HOST_1005 = "HOST.1005", "Failed to start vm on hypervisor";
    HOST_1006 = "HOST.1006", "Failed to stop vm on hypervisor";
    HOST_1007 = "HOST.1007", "Failed to reboot vm on hypervisor";
    HOST_1008 = "HOST.1008", "Failed to destroy vm on hypervisor";
    HOST_1009 = "HOST.1009", "Failed to migrate vm on hypervisor";
    HOST_1010 = "HOST.1010", "This host is disconnected, cannot perform the required operation";
    HOST_1011 = "HOST.1011", "Unable to perform an operation on the host, however, the failure is eligible for garbage collector";
    HOST_1012 = "HOST.1012", "The host password has been changed";

    // conf/errorCodes/hostAllocator.xml (prefix HOST_ALLOCATION)
    HOST_ALLOCATION_1000 = "HOST_ALLOCATION.1000", "No available host found";
    HOST_ALLOCATION_1001 = "HOST_ALLOCATION.1001", "No available nic found";

    // conf/errorCodes/vm.xml (prefix VM)
    VM_1000 = "VM.1000", "Unable to create a new vm";
    VM_1001 = "VM.1001", "Unable to start a vm";
    VM_1002 = "VM.1002", "Unable to stop a vm";
    VM_1003 = "VM.1003", "Unable to reboot a vm";
    VM_1004 = "VM.1004", "Unable to destroy a vm";
    VM_1005 = "VM.1005", "Unable to attach data volume to a vm";
    VM_1006 = "VM.1006", "Unable to detach data volume from a vm";
    VM_1007 = "VM.1007", "Unable to attach a network to vm";
    VM_1008 = "VM.1008", "Unable to migrate a vm";
    VM_1009 = "VM.1009", "Unable to allocate a mac address for vm's nic";
    VM_1010 = "VM.1010", "VM is not in state that allows required operation";
    VM_1011 = "VM.1011", "An error occurred while change vm password";
    VM_1012 = "VM.1012", "Unable to suspend a vm";
    VM_1013 = "VM.1013", "Unable to resume a vm";
    VM_1014 = "VM.1014", "VM is not in Stopped state, cannot do re-image operation.";
    VM_1015 = "VM.1015", "Original image media type of VM is ISO, cannot do re-image operation.";
    VM_1016 = "VM.1016", "Cannot find image cache, cannot do re-image operation.";
    VM_1017 = "VM.1017", "Cannot get vnc setting.";

    // conf/errorCodes/vmSchedulingRule.xml (prefix vmSchedulingRule)
    vmSchedulingRule_3001 = "vmSchedulingRule.3001", "The VM scheduling group has already had a VM Exclusive from Each Other scheduling policy attached. Attaching another one is not allowed.";
    vmSchedulingRule_3002 = "vmSchedulingRule.3002", "The VM scheduling group has already had a VM Affinitive to Each Other scheduling policy attached. Attaching a VM Exclusive from Each Other scheduling policy is not allowed.";
    vmSchedulingRule_3003 = "vmSchedulingRule.3003", "The VM scheduling group has already had a VM Affinitive to Each Other scheduling policy attached. Attaching another one is not allowed.";
    vmSchedulingRule_3004 = "vmSchedulingRule.3004", "The VM scheduling group has already had a VM Exclusive from Each Other scheduling policy attached. Attaching a VM Affinitive to Each Other scheduling policy is not allowed.";
    vmSchedulingRule_3005 = "vmSchedulingRule.3005", "The VM scheduling group has already had a VMs Affinitive to Hosts scheduling policy attached. You cannot attach another one to the group again.";
    vmSchedulingRule_3006 = "vmSchedulingRule.3006", "The VM scheduling group has already had a VMs Exclusive from Hosts scheduling policy attached. You cannot attach a VMs Affinitive to Hosts scheduling policy to the group.";
    vmSchedulingRule_3007 = "vmSchedulingRule.3007", "The VM scheduling group has already had a VMs Affinitive to Hosts scheduling policy attached. You cannot attach a VMs Exclusive from Hosts scheduling policy to the group.";
    vmSchedulingRule_3008 = "vmSchedulingRule.3008", "The VM scheduling group has already had a VM Exclusive from Each Other scheduling policy attached. The number of hosts available for the VM instances in the scheduling group to run is less than that of the VM instances in the group. You cannot attach a VMs Affinitive to Hosts scheduling policy to the group.";
    vmSchedulingRule_3009 = "vmSchedulingRule.3009", "The VM scheduling group has already had a VMs Affinitive to Hosts scheduling policy attached. The number of hosts available for the VM instances in the scheduling group to run is less than that of the VM instances in the group. You cannot attach a VM Exclusive from Each Other scheduling policy to the group again.";
    vmSchedulingRule_3010 = "vmSchedulingRule.3010", "The VM scheduling group has already had a VM Exclusive from Each Other scheduling policy attached. The number of hosts available for the VM instances in the scheduling group to run is less than that of the VM instances in the group. You cannot attach a VMs Exclusive from Hosts scheduling policy to the group.";
    vmSchedulingRule_3011 = "vmSchedulingRule.3011", "The VM scheduling group has already had a VMs Exclusive from Hosts scheduling policy attached. The number of hosts available for the VM instances in the scheduling group to run is less than that of the VM instances in the group. You cannot attach a VM Exclusive from Each Other scheduling policy to the group.";

    // conf/errorCodes/applianceVm.xml (prefix APPLIANCE_VM)
    APPLIANCE_VM_1000 = "APPLIANCE_VM.1000", "The management nic IP has been occupied";
    APPLIANCE_VM_1001 = "APPLIANCE_VM.1001", "Unable to start appliance VM for some reason";

    // conf/errorCodes/l2.xml (prefix L2)
    L2_1000 = "L2.1000", "Unable to attach L2Network to a cluster";
    L2_1001 = "L2.1001", "Unable to allocate a vni from L2Network";

    // conf/errorCodes/l3.xml (prefix L3)
    L3_1000 = "L3.1000", "Unable to allocate an ip address from L3Network";

    // conf/errorCodes/networkService.xml (prefix NWS)
    NWS_1000 = "NWS.1000", "Unable to attach a network service provider to L2Network";
    NWS_1001 = "NWS.1001", "Unable to detach a network service provider from L2Network";

    // conf/errorCodes/securityGroup.xml (prefix SG)
    SG_1000 = "SG.1000", "Unable to add vm's nic to security group";
    SG_1001 = "SG.1001", "Resource does not exist";
    SG_1002 = "SG.1002", "Duplicate security group rules";
    SG_1003 = "SG.1003", "Rule fields conflict";
    SG_1004 = "SG.1004", "Rule fields are not supported";
    SG_1005 = "SG.1005", "Rule's port field is invalid";
    SG_1006 = "SG.1006", "Rule's port field is invalid";
    SG_2000 = "SG.2000", "Rule check ok";

    // conf/errorCodes/virtualRouter.xml (prefix VR)
    VR_1000 = "VR.1000", "Virtual router is not in a corret state";
    VR_1001 = "VR.1001", "No public network defined in virtual router offering";
    VR_1002 = "VR.1002", "No default virtual router offering found";

    // conf/errorCodes/primaryStorage.xml (prefix PS)
    PS_1000 = "PS.1000", "Unable to allocate a primary storage that has available space for required volume";
    PS_1001 = "PS.1001", "Unable to attach a primary storage to cluster";
    PS_1002 = "PS.1002", "Unable to detach a primary storage from cluster";
    PS_1003 = "PS.1003", "The primary storage is disconnected";
    PS_1004 = "PS.1004", "The primary storage type does not support set qos";

    // conf/errorCodes/backupStorage.xml (prefix BS)
    BS_1000 = "BS.1000", "Unable to download an image to backup storage";
    BS_1001 = "BS.1001", "Unable to attach backup storage to zone";
    BS_1002 = "BS.1002", "Unable to detach backup storage from zone";
    BS_1003 = "BS.1003", "Unable to allocate a backup storage";
    BS_1004 = "BS.1004", "Unable to ping a backup storage that has been taken over";
    BS_1500 = "BS.1500", "Unable to connect a backup storage";

    // conf/errorCodes/sftp.xml (prefix BS.SFTP)
    BS_SFTP_1000 = "BS.SFTP.1000", "Unable to reconnect to sftp backup storage";

    // conf/errorCodes/image.xml (prefix IMG)
    IMG_1000 = "IMG.1000", "Unable to create an image from vm's volume";
    IMG_1001 = "IMG.1001", "upload image interrupted";

    // conf/errorCodes/volume.xml (prefix VOLUME)
    VOLUME_1000 = "VOLUME.1000", "Unable to deactivate a volume in use";
    VOLUME_1001 = "VOLUME.1001", "fail to flatten volume";

    // conf/errorCodes/volumeSnapshot.xml (prefix VOLUME_SNAPSHOT)
    VOLUME_SNAPSHOT_1000 = "VOLUME_SNAPSHOT.1000", "Snapshot is not in correct status for operation.";
    VOLUME_SNAPSHOT_1001 = "VOLUME_SNAPSHOT.1001", "Delete error while full snapshot is creating.";
    VOLUME_SNAPSHOT_1002 = "VOLUME_SNAPSHOT.1002", "Failed to delete volume snapshots in batch.";

    // conf/errorCodes/volumeBackup.xml (prefix VOL_BACKUP)
    VOL_BACKUP_1000 = "VOL_BACKUP.1000", "Unable to create volume backup for stopped vm.";

    // conf/errorCodes/tag.xml (prefix TAG)
    TAG_1000 = "TAG.1000", "Duplicated tag.";

    // conf/errorCodes/search.xml (prefix SEARCH)
    SEARCH_1000 = "SEARCH.1000", "Search module disabled";

    // conf/errorCodes/portal.xml (prefix PORTAL)
    PORTAL_1000 = "PORTAL.1000", "No service defines this API message";
    PORTAL_1001 = "PORTAL.1001", "A required field is missed in API message";
    PORTAL_1002 = "PORTAL.1002", "Management server is not ready to serve API message";

}

/// The catalogue entry of a code string such as `"SYS.1007"`.
pub fn lookup(code: &str) -> Option<Code> {
    ALL.iter().copied().find(|c| c.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique() {
        let mut seen = HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.code), "duplicate code {}", c.code);
        }
        assert_eq!(ALL.len(), NAMED.len());
    }

    #[test]
    fn constant_names_match_codes() {
        for (name, c) in NAMED {
            assert_eq!(*name, c.code.replace('.', "_"), "constant {name} holds code {}", c.code);
            assert!(!c.description.is_empty(), "{} has an empty description", c.code);
        }
    }

    #[test]
    fn lookup_finds_known_codes() {
        assert_eq!(lookup("HOST_ALLOCATION.1000").map(|c| c.description), Some("No available host found"));
        assert_eq!(lookup("HOST_ALLOCATION.1000"), Some(HOST_ALLOCATION_1000));
        assert_eq!(lookup("SYS.1007"), Some(SYS_1007));
        assert_eq!(lookup("BS.SFTP.1000"), Some(BS_SFTP_1000));
        assert_eq!(lookup("NO.SUCH.CODE"), None);
    }
}
