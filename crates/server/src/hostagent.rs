//! The management-node side of the host-agent protocol.
//!
//! A host is driven through a [`HostAgent`]: `connect` returns the host's facts (CPU, memory,
//! hypervisor version, architecture, accelerator), `ping` checks it is still there. Two
//! implementations: [`SimulatorAgent`] (facts from AddSimulatorHost's capacities, always
//! connected) and [`KvmAgentClient`] (JSON over HTTP to `rzstack agent` on the host at
//! `http://<managementIp>:7070`, authenticated with `Authorization: Bearer <token>` where the
//! token is the host's AddKVMHost `password`).
//!
//! The wire types and the protocol version live in [`rzstack_api::agent`]; an agent answering
//! with a different version is refused.

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Serialize;
use std::sync::OnceLock;
use std::time::Duration;

pub use rzstack_api::agent::{
    ConnectCmd, ConnectRsp, ErrorRsp, HostFacts, PingCmd, PingRsp, DEFAULT_PORT as KVM_AGENT_PORT, PATH_CONNECT,
    PATH_PING, PROTOCOL_VERSION,
};

/// How long to wait for a TCP connection to an agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an agent's whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an agent call failed; the text is the reason shown to users.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AgentError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    BadReply(String),
}

/// The management node's handle on one host's agent.
pub trait HostAgent: Send + Sync {
    /// Where the agent is, for messages (`http://ip:7070`, `simulator`).
    fn url(&self) -> String;
    /// Connect and read the host's facts.
    fn connect<'a>(&'a self, cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>>;
    /// Check the agent still answers for `host_uuid`.
    fn ping<'a>(&'a self, host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>>;
}

/// A simulated host: its facts are what AddSimulatorHost was given; always connected.
#[derive(Debug, Clone)]
pub struct SimulatorAgent {
    pub cpu_capacity: i64,
    pub memory_capacity: i64,
    pub architecture: String,
}

impl HostAgent for SimulatorAgent {
    fn url(&self) -> String {
        "simulator".into()
    }

    fn connect<'a>(&'a self, _cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>> {
        Box::pin(async move {
            Ok(HostFacts {
                cpu_num: self.cpu_capacity,
                cpu_sockets: 1,
                cpu_model_name: "Simulator".into(),
                memory_bytes: self.memory_capacity,
                hypervisor_type: "Simulator".into(),
                hypervisor_version: "1".into(),
                architecture: self.architecture.clone(),
                accelerator: "none".into(),
                os_distribution: None,
                os_release: None,
                os_version: None,
            })
        })
    }

    fn ping<'a>(&'a self, _host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The HTTP client for the KVM agent on a host.
#[derive(Clone)]
pub struct KvmAgentClient {
    pub base: String,
    /// The shared secret sent as `Authorization: Bearer <token>`.
    token: String,
}

impl std::fmt::Debug for KvmAgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmAgentClient").field("base", &self.base).finish_non_exhaustive()
    }
}

fn client() -> Result<&'static reqwest::Client, AgentError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| AgentError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
    Ok(CLIENT.get_or_init(|| c))
}

/// The agent port: 7070, or `RZSTACK_KVM_AGENT_PORT` (for tests and non-standard setups).
pub fn kvm_agent_port() -> u16 {
    std::env::var("RZSTACK_KVM_AGENT_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(KVM_AGENT_PORT)
}

impl KvmAgentClient {
    /// The agent of the host at `management_ip`, authenticated with `token` (the host's
    /// AddKVMHost password).
    pub fn new(management_ip: &str, token: &str) -> Self {
        Self::with_base(format!("http://{management_ip}:{}", kvm_agent_port()), token)
    }

    pub fn with_base(base: String, token: &str) -> Self {
        KvmAgentClient { base, token: token.to_string() }
    }

    async fn call<Q: Serialize, R: serde::de::DeserializeOwned>(&self, path: &str, body: &Q) -> Result<R, AgentError> {
        let url = format!("{}{path}", self.base);
        let rsp = client()?.post(&url).bearer_auth(&self.token).json(body).send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "cannot be reached" };
            AgentError::Unreachable(format!("the host agent at {url} {what}: {}", error_chain(&e)))
        })?;
        let status = rsp.status();
        if !status.is_success() {
            let text = rsp.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<ErrorRsp>(&text).map(|e| e.error).unwrap_or(text);
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(AgentError::Refused(format!(
                    "the host agent at {url} refused the credentials (HTTP {status}): {reason}; the host's \
                     password must be the agent's token"
                )));
            }
            return Err(AgentError::BadReply(format!("the host agent at {url} answered HTTP {status}: {reason}")));
        }
        rsp.json::<R>()
            .await
            .map_err(|e| AgentError::BadReply(format!("the host agent at {url} sent an unreadable answer: {e}")))
    }
}

/// `e` and its sources, joined (reqwest's top-level text alone hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn check_version(v: u32) -> Result<(), AgentError> {
    if v != PROTOCOL_VERSION {
        return Err(AgentError::BadReply(format!(
            "the host agent speaks protocol version {v}, this management node speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

impl HostAgent for KvmAgentClient {
    fn url(&self) -> String {
        self.base.clone()
    }

    fn connect<'a>(&'a self, cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>> {
        Box::pin(async move {
            let rsp: ConnectRsp = self.call(PATH_CONNECT, cmd).await?;
            check_version(rsp.version)?;
            if !rsp.success {
                return Err(AgentError::Refused(rsp.error.unwrap_or_else(|| "the agent refused to connect".into())));
            }
            let facts = rsp.facts.ok_or_else(|| AgentError::BadReply("the agent sent no host facts".into()))?;
            if facts.cpu_num <= 0 || facts.memory_bytes <= 0 || facts.architecture.is_empty() {
                return Err(AgentError::BadReply(format!(
                    "the agent reported unusable facts: cpuNum {}, memory {} bytes, architecture {:?}",
                    facts.cpu_num, facts.memory_bytes, facts.architecture
                )));
            }
            Ok(facts)
        })
    }

    fn ping<'a>(&'a self, host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let cmd = PingCmd { version: PROTOCOL_VERSION, host_uuid: host_uuid.to_string() };
            let rsp: PingRsp = self.call(PATH_PING, &cmd).await?;
            check_version(rsp.version)?;
            if !rsp.success {
                return Err(AgentError::Refused(rsp.error.unwrap_or_else(|| "the agent refused the ping".into())));
            }
            match rsp.host_uuid {
                Some(served) if served != host_uuid => Err(AgentError::Refused(format!(
                    "the host agent at {} serves host[uuid:{served}], not host[uuid:{host_uuid}]",
                    self.base
                ))),
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
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
}
