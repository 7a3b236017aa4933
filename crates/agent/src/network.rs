//! Host networking: a Linux bridge per L2 network (over a physical interface or its VLAN
//! sub-interface), a tap per VM NIC, and a dnsmasq per L3 network serving static leases only.
//!
//! Safety: the interface carrying the host's default route, and any interface with an IPv4
//! address, is never put into a bridge (that would cut the host off).
//! DHCP state lives in `<data-dir>/dhcp/<l3Uuid>/`: `spec.json`, `hosts` (the static leases,
//! dnsmasq's `--dhcp-hostsfile`), `dnsmasq.pid`, `dnsmasq.log`. dnsmasq keeps no lease file
//! (`--leasefile-ro`): every address is fixed by `hosts`, so a restart loses nothing.

use crate::sys::{self, write_atomic};
use rzstack_api::agent::{
    netmask_prefix, BridgeSpec, Deleted, DhcpSpec, NetworkPrepareCmd, NetworkPrepared, NetworkReleaseCmd, TapSpec,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Network {
    dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

fn sysnet(name: &str) -> PathBuf {
    Path::new("/sys/class/net").join(name)
}

fn exists(name: &str) -> bool {
    sysnet(name).exists()
}

/// Whether an interface is administratively up (IFF_UP in its flags).
fn is_up(name: &str) -> bool {
    std::fs::read_to_string(sysnet(name).join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0)
}

/// The bridge an interface is a port of.
fn master_of(name: &str) -> Option<String> {
    let l = std::fs::read_link(sysnet(name).join("master")).ok()?;
    Some(l.file_name()?.to_string_lossy().into_owned())
}

/// Interfaces carrying a default route (from /proc/net/route).
fn default_route_ifaces() -> Vec<String> {
    let t = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
        })
        .collect()
}

async fn has_ipv4(name: &str) -> Result<bool, String> {
    let out = sys::run("ip", &["-4", "-o", "addr", "show", "dev", name]).await?;
    Ok(!out.trim().is_empty())
}

async fn ip(args: &[&str]) -> Result<(), String> {
    sys::run("ip", args).await.map(|_| ())
}

/// The tap's own MAC: the NIC's with the first byte 0xfe.
pub fn tap_mac(nic_mac: &str) -> String {
    format!("fe{}", &nic_mac.to_ascii_lowercase()[2..])
}

fn network_address(gw: &str, mask: &str) -> Option<String> {
    let g: u32 = gw.parse::<std::net::Ipv4Addr>().ok()?.into();
    let m: u32 = mask.parse::<std::net::Ipv4Addr>().ok()?.into();
    Some(std::net::Ipv4Addr::from(g & m).to_string())
}

impl Network {
    pub fn new(data_dir: &Path) -> Self {
        Network { dir: data_dir.join("dhcp"), lock: tokio::sync::Mutex::new(()) }
    }

    async fn bridge(&self, b: &BridgeSpec) -> Result<String, String> {
        let name = b.name();
        let phys = &b.physical_interface;
        if !exists(phys) {
            return Err(format!("the interface {phys} does not exist on this host"));
        }
        let port = match b.vlan {
            None => phys.clone(),
            Some(v) => format!("{phys}.{v}"),
        };
        if master_of(&port).as_deref() != Some(name.as_str()) {
            if default_route_ifaces().iter().any(|i| i == phys) {
                return Err(format!("{phys} carries this host's default route; it is not put into a bridge"));
            }
            if has_ipv4(phys).await? && b.vlan.is_none() {
                return Err(format!("{phys} has an IPv4 address; it is not put into a bridge"));
            }
            if let Some(m) = master_of(&port) {
                return Err(format!("{port} is already a port of bridge {m}"));
            }
        }
        if let Some(v) = b.vlan {
            if !exists(&port) {
                ip(&["link", "add", "link", phys, "name", &port, "type", "vlan", "id", &v.to_string()]).await?;
            }
        }
        if !exists(&name) {
            ip(&["link", "add", "name", &name, "type", "bridge"]).await?;
        } else if !sysnet(&name).join("bridge").exists() {
            return Err(format!("{name} exists and is not a bridge"));
        }
        if master_of(&port).is_none() {
            ip(&["link", "set", "dev", &port, "master", &name]).await?;
        }
        // Only what is not up yet: on a bridge already in use this spawns nothing.
        for i in [phys.as_str(), port.as_str(), name.as_str()] {
            if !is_up(i) {
                ip(&["link", "set", "dev", i, "up"]).await?;
            }
        }
        Ok(name)
    }

    /// The `ip -batch` lines that make the tap (when missing) and set its MAC, alias, bridge, up.
    fn tap(&self, t: &TapSpec) -> Result<Vec<String>, String> {
        if !sysnet(&t.bridge_name).join("bridge").exists() {
            return Err(format!("the bridge {} does not exist", t.bridge_name));
        }
        let mut lines = Vec::new();
        if !exists(&t.tap_name) {
            lines.push(format!("tuntap add dev {} mode tap", t.tap_name));
        } else if !sysnet(&t.tap_name).join("tun_flags").exists() {
            return Err(format!("{} exists and is not a tap", t.tap_name));
        }
        let alias = format!("vm={} mac={}", t.vm_uuid, t.mac.to_ascii_lowercase());
        let plain = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:=".contains(c));
        for w in [t.tap_name.as_str(), t.bridge_name.as_str(), t.vm_uuid.as_str(), t.mac.as_str()] {
            if !plain(w) {
                return Err(format!("unusable name {w:?} for a tap"));
            }
        }
        lines.push(format!(
            "link set dev {} address {} alias \"{alias}\" master {} up",
            t.tap_name,
            tap_mac(&t.mac),
            t.bridge_name
        ));
        Ok(lines)
    }

    fn l3_dir(&self, l3: &str) -> PathBuf {
        self.dir.join(l3)
    }

    fn dnsmasq_pid(&self, l3: &str) -> Option<u32> {
        let dir = self.l3_dir(l3);
        sys::read_pid(&dir.join("dnsmasq.pid")).filter(|p| sys::alive(*p, &dir.to_string_lossy()))
    }

    /// The leases in a hosts file: (mac, line).
    fn read_hosts(path: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (l.split(',').next().unwrap_or_default().to_string(), l.to_string()))
            .collect()
    }

    async fn start_dnsmasq(&self, d: &DhcpSpec) -> Result<(), String> {
        let dir = self.l3_dir(&d.l3_uuid);
        let s = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let net = network_address(&d.gateway, &d.netmask).ok_or("bad gateway/netmask")?;
        let mut args = vec![
            "--conf-file=/dev/null".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--port=0".into(),
            "--user=root".into(),
            "--group=root".into(),
            format!("--interface={}", d.bridge_name),
            "--bind-interfaces".into(),
            "--except-interface=lo".into(),
            format!("--dhcp-range={net},static,{},12h", d.netmask),
            format!("--dhcp-hostsfile={}", s("hosts")),
            "--leasefile-ro".into(),
            "--dhcp-authoritative".into(),
            format!("--dhcp-option=option:router,{}", d.gateway),
            format!("--pid-file={}", s("dnsmasq.pid")),
            format!("--log-facility={}", s("dnsmasq.log")),
            "--log-dhcp".into(),
        ];
        if !d.dns.is_empty() {
            args.push(format!("--dhcp-option=option:dns-server,{}", d.dns.join(",")));
        }
        if let Some(dom) = &d.dns_domain {
            args.push(format!("--domain={dom}"));
        }
        let _ = std::fs::remove_file(dir.join("dnsmasq.pid"));
        sys::run("dnsmasq", &args).await.map_err(|e| format!("cannot start the DHCP server: {e}"))?;
        // Up to 2 s, polled from 1 ms up to every 20 ms.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut wait = Duration::from_millis(1);
        while tokio::time::Instant::now() < deadline {
            if self.dnsmasq_pid(&d.l3_uuid).is_some() {
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
        if self.dnsmasq_pid(&d.l3_uuid).is_some() {
            return Ok(());
        }
        Err(format!("dnsmasq for L3 {} did not start: see {}", d.l3_uuid, s("dnsmasq.log")))
    }

    async fn stop_dnsmasq(&self, l3: &str) {
        if let Some(pid) = self.dnsmasq_pid(l3) {
            sys::terminate(pid, &self.l3_dir(l3).to_string_lossy(), Duration::from_secs(3)).await;
        }
    }

    /// The `ip -batch` line giving the bridge the L3's gateway address.
    fn dhcp_addr(&self, d: &DhcpSpec) -> Result<String, String> {
        if !sysnet(&d.bridge_name).join("bridge").exists() {
            return Err(format!("the bridge {} does not exist", d.bridge_name));
        }
        let prefix = netmask_prefix(&d.netmask).ok_or("bad netmask")?;
        let gw: std::net::Ipv4Addr = d.gateway.parse().map_err(|_| format!("bad gateway {}", d.gateway))?;
        Ok(format!("addr replace {gw}/{prefix} dev {}", d.bridge_name))
    }

    /// The L3's static leases merged into its hosts file; dnsmasq started or told to re-read it.
    async fn dhcp(&self, d: &DhcpSpec) -> Result<(), String> {
        let dir = self.l3_dir(&d.l3_uuid);
        sys::mkdirs(&dir)?;
        let spec = serde_json::to_vec_pretty(d).map_err(|e| e.to_string())?;
        write_atomic(&dir.join("spec.json"), &spec)?;
        // Merge: a given MAC or IP replaces the entry that had it.
        let hosts = dir.join("hosts");
        let mut lines: Vec<(String, String)> = Self::read_hosts(&hosts)
            .into_iter()
            .filter(|(mac, line)| {
                !d.leases
                    .iter()
                    .any(|l| l.mac.eq_ignore_ascii_case(mac) || line.split(',').nth(1) == Some(l.ip.as_str()))
            })
            .collect();
        for l in &d.leases {
            let mac = l.mac.to_ascii_lowercase();
            let line = match &l.hostname {
                Some(h) => format!("{mac},{},{h}", l.ip),
                None => format!("{mac},{}", l.ip),
            };
            lines.push((mac, line));
        }
        let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        write_atomic(&hosts, text.as_bytes())?;
        match self.dnsmasq_pid(&d.l3_uuid) {
            // dnsmasq re-reads --dhcp-hostsfile on SIGHUP.
            Some(pid) => sys::signal(pid, "-HUP").await,
            None => self.start_dnsmasq(d).await,
        }
    }

    pub async fn prepare(&self, cmd: &NetworkPrepareCmd) -> Result<NetworkPrepared, String> {
        cmd.validate()?;
        let _g = self.lock.lock().await;
        let mut bridges = Vec::new();
        for b in &cmd.bridges {
            bridges.push(self.bridge(b).await?);
        }
        // The taps and the gateway addresses with one `ip` process.
        let mut lines = Vec::new();
        for t in &cmd.taps {
            lines.extend(self.tap(t)?);
        }
        for d in &cmd.dhcp {
            lines.push(self.dhcp_addr(d)?);
        }
        sys::ip_batch(&lines).await?;
        for d in &cmd.dhcp {
            self.dhcp(d).await?;
        }
        Ok(NetworkPrepared { bridges })
    }

    pub async fn release(&self, cmd: &NetworkReleaseCmd) -> Result<Deleted, String> {
        cmd.validate()?;
        let _g = self.lock.lock().await;
        let mut deleted = false;
        for t in &cmd.taps {
            if exists(t) {
                if !sysnet(t).join("tun_flags").exists() {
                    return Err(format!("{t} is not a tap"));
                }
                ip(&["link", "del", "dev", t]).await?;
                deleted = true;
            }
        }
        for l in &cmd.leases {
            let hosts = self.l3_dir(&l.l3_uuid).join("hosts");
            let before = Self::read_hosts(&hosts);
            let after: Vec<_> =
                before.iter().filter(|(mac, _)| !l.macs.iter().any(|m| m.eq_ignore_ascii_case(mac))).collect();
            if after.len() == before.len() {
                continue;
            }
            deleted = true;
            let text: String = after.iter().map(|(_, line)| format!("{line}\n")).collect();
            write_atomic(&hosts, text.as_bytes())?;
            // A restart forgets the dropped hosts' leases (SIGHUP would keep them until expiry).
            if self.dnsmasq_pid(&l.l3_uuid).is_some() {
                let spec: Option<DhcpSpec> = std::fs::read(self.l3_dir(&l.l3_uuid).join("spec.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                self.stop_dnsmasq(&l.l3_uuid).await;
                if let Some(spec) = spec {
                    self.start_dnsmasq(&spec).await?;
                }
            }
        }
        for l3 in &cmd.dhcp {
            let dir = self.l3_dir(l3);
            if !dir.exists() {
                continue;
            }
            self.stop_dnsmasq(l3).await;
            let spec: Option<DhcpSpec> =
                std::fs::read(dir.join("spec.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(s) = spec {
                if let Some(p) = netmask_prefix(&s.netmask) {
                    if exists(&s.bridge_name) {
                        let _ = ip(&["addr", "del", &format!("{}/{p}", s.gateway), "dev", &s.bridge_name]).await;
                    }
                }
            }
            std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            deleted = true;
        }
        for b in &cmd.bridges {
            if !exists(b) {
                continue;
            }
            if !sysnet(b).join("bridge").exists() {
                return Err(format!("{b} is not a bridge"));
            }
            let ports: Vec<String> = std::fs::read_dir(sysnet(b).join("brif"))
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            for p in ports {
                if Path::new("/proc/net/vlan").join(&p).exists() {
                    ip(&["link", "del", "dev", &p]).await?;
                } else {
                    ip(&["link", "set", "dev", &p, "nomaster"]).await?;
                }
            }
            ip(&["link", "del", "dev", b]).await?;
            deleted = true;
        }
        Ok(Deleted { deleted })
    }
}
