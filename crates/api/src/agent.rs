//! The host-agent protocol: what the management node and the agent on a KVM host send each
//! other. JSON over HTTP, every body carrying `version`; serde types only, shared by both
//! sides (crates/server's `hostagent` client and crates/agent's server).
//!
//! Version 1. Endpoints (all `POST`, JSON bodies, `Authorization: Bearer <token>`):
//! - [`PATH_CONNECT`]: [`ConnectCmd`] → [`ConnectRsp`] (carries [`HostFacts`])
//! - [`PATH_PING`]: [`PingCmd`] → [`PingRsp`]
//!
//! An answer with `success: false` is a refusal whose `error` text is the reason. An agent
//! refuses (HTTP 401, an [`ErrorRsp`] body) a caller without the right bearer token, and
//! answers `success: false` to a command of another protocol version.

use serde::{Deserialize, Serialize};

/// The protocol version both sides speak.
pub const PROTOCOL_VERSION: u32 = 1;
/// The port the KVM agent listens on (upstream's kvmagent port).
pub const DEFAULT_PORT: u16 = 7070;
pub const PATH_CONNECT: &str = "/v1/host/connect";
pub const PATH_PING: &str = "/v1/host/ping";

/// Which accelerator QEMU uses on a host.
pub const ACCEL_KVM: &str = "kvm";
pub const ACCEL_TCG: &str = "tcg";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectCmd {
    pub version: u32,
    pub host_uuid: String,
    /// The management node's uuid (the agent reports back to it in later versions).
    pub management_node_uuid: String,
}

/// What a host is, as its agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    pub cpu_num: i64,
    pub cpu_sockets: i64,
    pub cpu_model_name: String,
    /// Total memory in bytes.
    pub memory_bytes: i64,
    /// e.g. `KVM`
    pub hypervisor_type: String,
    /// The QEMU version, e.g. `7.2.19`; empty when QEMU is not installed.
    pub hypervisor_version: String,
    /// e.g. `x86_64`, `aarch64`
    pub architecture: String,
    /// [`ACCEL_KVM`] (hardware virtualization) or [`ACCEL_TCG`] (emulation)
    pub accelerator: String,
    #[serde(default)]
    pub os_distribution: Option<String>,
    #[serde(default)]
    pub os_release: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectRsp {
    pub version: u32,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub facts: Option<HostFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PingCmd {
    pub version: u32,
    pub host_uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PingRsp {
    pub version: u32,
    pub success: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The host uuid the agent believes it serves (a mismatch means another MN took it).
    #[serde(default)]
    pub host_uuid: Option<String>,
}

/// The body of a refusal that is not an answer to a command (bad token, unreadable body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRsp {
    pub version: u32,
    pub success: bool,
    pub error: String,
}

impl ErrorRsp {
    pub fn new(error: impl Into<String>) -> Self {
        ErrorRsp { version: PROTOCOL_VERSION, success: false, error: error.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        let f = HostFacts { cpu_num: 4, memory_bytes: 8, architecture: "x86_64".into(), ..Default::default() };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["cpuNum"], 4);
        assert_eq!(v["memoryBytes"], 8);
        assert_eq!(v["cpuModelName"], "");
        assert_eq!(v["accelerator"], "");
        let c = ConnectCmd { version: 1, host_uuid: "h".into(), management_node_uuid: "m".into() };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"version": 1, "hostUuid": "h", "managementNodeUuid": "m"})
        );
        let p: PingRsp = serde_json::from_str(r#"{"version":1,"success":true}"#).unwrap();
        assert_eq!(p.host_uuid, None);
        assert_eq!(
            serde_json::to_value(ErrorRsp::new("no")).unwrap(),
            serde_json::json!({"version": 1, "success": false, "error": "no"})
        );
    }
}
