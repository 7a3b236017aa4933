//! What this host is: CPU, memory, QEMU, architecture, OS, and the accelerator QEMU will use.
//! Parsers work on file contents so they can be tested without the files.

use rzstack_api::agent::{HostFacts, ACCEL_KVM, ACCEL_TCG};
use std::path::Path;
use std::process::Stdio;

/// The `--accel` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM where it really works, TCG elsewhere.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("unknown accelerator {s:?}: use auto, kvm or tcg")),
        }
    }
}

/// What the machine offers for hardware virtualization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmProbe {
    /// `/dev/kvm` exists and this process can open it read-write.
    pub usable_dev: bool,
    /// The KVM module is PVM (`/sys/module/kvm_pvm`): nested paravirtual KVM that cannot run
    /// a stock guest kernel (it emulates it, slowly, then fails; see vm-notes.md).
    pub pvm: bool,
}

impl KvmProbe {
    pub fn probe() -> KvmProbe {
        let usable_dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        KvmProbe { usable_dev, pvm: Path::new("/sys/module/kvm_pvm").exists() }
    }
}

/// The accelerator to use (`kvm` or `tcg`), or why the choice cannot be honoured.
pub fn choose_accel(want: Accel, probe: KvmProbe) -> Result<&'static str, String> {
    match want {
        Accel::Tcg => Ok(ACCEL_TCG),
        Accel::Auto if probe.usable_dev && !probe.pvm => Ok(ACCEL_KVM),
        Accel::Auto => Ok(ACCEL_TCG),
        Accel::Kvm if probe.usable_dev => Ok(ACCEL_KVM),
        Accel::Kvm => Err("--accel kvm: /dev/kvm does not exist or cannot be opened read-write".into()),
    }
}

/// `(processors, sockets, model name)` from /proc/cpuinfo. Sockets are the distinct
/// `physical id`s (1 when the kernel shows none, as in many VMs).
pub fn parse_cpuinfo(text: &str) -> (i64, i64, String) {
    let mut cpus = 0i64;
    let mut sockets: Vec<&str> = Vec::new();
    let mut model = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => cpus += 1,
            "physical id" if !sockets.contains(&v) => sockets.push(v),
            // x86: "model name"; some arm64 kernels: "CPU part" only, so fall back below.
            "model name" if model.is_empty() => model = v.to_string(),
            _ => {}
        }
    }
    (cpus, (sockets.len() as i64).max(1), model)
}

/// Total memory in bytes from /proc/meminfo (`MemTotal: N kB`).
pub fn parse_meminfo(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: i64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// The version from `qemu-system-* --version` ("QEMU emulator version 7.2.19 (Debian ...)").
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.split("version").nth(1)?;
    let v = rest.split_whitespace().next()?;
    v.chars().next().filter(char::is_ascii_digit)?;
    Some(v.to_string())
}

/// `(ID, VERSION_CODENAME, VERSION_ID)` from /etc/os-release.
pub fn parse_os_release(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim().trim_matches('"').to_string();
            (!v.is_empty()).then_some(v)
        })
    };
    (get("ID"), get("VERSION_CODENAME"), get("VERSION_ID"))
}

/// The QEMU system emulator for this machine's architecture.
pub fn qemu_binary() -> String {
    format!("qemu-system-{}", std::env::consts::ARCH)
}

/// The installed QEMU's version, if any.
pub async fn qemu_version() -> Option<String> {
    let out = tokio::process::Command::new(qemu_binary())
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    out.status.success().then(|| parse_qemu_version(&String::from_utf8_lossy(&out.stdout))).flatten()
}

/// Gather this host's facts; `accelerator` was chosen at start.
pub async fn gather(accelerator: &str) -> Result<HostFacts, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    let (cpu_num, cpu_sockets, cpu_model_name) = parse_cpuinfo(&cpuinfo);
    if cpu_num <= 0 {
        return Err("/proc/cpuinfo lists no processor".into());
    }
    let memory_bytes = parse_meminfo(&meminfo).ok_or("/proc/meminfo has no readable MemTotal")?;
    let (os_distribution, os_release, os_version) =
        std::fs::read_to_string("/etc/os-release").map(|t| parse_os_release(&t)).unwrap_or((None, None, None));
    Ok(HostFacts {
        cpu_num,
        cpu_sockets,
        cpu_model_name,
        memory_bytes,
        hypervisor_type: "KVM".into(),
        hypervisor_version: qemu_version().await.unwrap_or_default(),
        architecture: std::env::consts::ARCH.to_string(),
        accelerator: accelerator.to_string(),
        os_distribution,
        os_release,
        os_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo() {
        let t = "processor\t: 0\nphysical id\t: 0\nmodel name\t: AMD EPYC 9R45\n\n\
                 processor\t: 1\nphysical id\t: 1\nmodel name\t: AMD EPYC 9R45\n\n\
                 processor\t: 2\nphysical id\t: 1\nmodel name\t: AMD EPYC 9R45\n";
        assert_eq!(parse_cpuinfo(t), (3, 2, "AMD EPYC 9R45".to_string()));
        assert_eq!(parse_cpuinfo("processor : 0\n"), (1, 1, String::new()));
    }

    #[test]
    fn meminfo() {
        assert_eq!(parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24576000 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn qemu_versions() {
        let t = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022 Fabrice\n";
        assert_eq!(parse_qemu_version(t).as_deref(), Some("7.2.19"));
        assert_eq!(parse_qemu_version("QEMU emulator version 10.0.2\n").as_deref(), Some("10.0.2"));
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn os_release() {
        let t =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_os_release(t), (Some("debian".into()), Some("bookworm".into()), Some("12".into())));
    }

    #[test]
    fn accelerator_choice() {
        let real = KvmProbe { usable_dev: true, pvm: false };
        let pvm = KvmProbe { usable_dev: true, pvm: true };
        let none = KvmProbe { usable_dev: false, pvm: false };
        assert_eq!(choose_accel(Accel::Auto, real), Ok("kvm"));
        assert_eq!(choose_accel(Accel::Auto, pvm), Ok("tcg"));
        assert_eq!(choose_accel(Accel::Auto, none), Ok("tcg"));
        assert_eq!(choose_accel(Accel::Tcg, real), Ok("tcg"));
        assert_eq!(choose_accel(Accel::Kvm, pvm), Ok("kvm"));
        assert!(choose_accel(Accel::Kvm, none).is_err());
        assert_eq!("auto".parse::<Accel>(), Ok(Accel::Auto));
        assert!("xen".parse::<Accel>().is_err());
    }
}
