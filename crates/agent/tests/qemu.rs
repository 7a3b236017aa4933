//! QEMU under the agent's control: start a process with a QMP socket, talk QMP, stop it, with
//! nothing booted (paused or `-machine none`), so it fits CI limits under TCG. Skips with a
//! message when QEMU is not installed.
use rzstack_agent::qemu::{Qemu, QemuError, QemuSpec, Stopped};
use rzstack_agent::qmp::QmpError;
use std::time::Duration;

fn qemu_installed() -> bool {
    let bin = rzstack_agent::facts::qemu_binary();
    let found = std::process::Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: {bin} is not installed (apt-get install qemu-system-x86)");
    }
    found
}

fn spec(dir: &std::path::Path, name: &str, machine: &str) -> QemuSpec {
    QemuSpec {
        name: name.into(),
        run_dir: dir.to_path_buf(),
        accel: "tcg".into(),
        machine: machine.into(),
        memory_mib: 128,
        cpus: 1,
        paused: true,
        extra: vec![],
    }
}

fn alive(pid: u32) -> bool {
    // A reaped child's /proc entry is gone.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn paused_q35_status_cont_and_forced_stop() {
    if !qemu_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Qemu::start(spec(dir.path(), "vm1", "q35")).await.expect("start");
    let pid = q.pid().expect("pid");
    assert!(alive(pid));
    assert!(q.qmp.version.starts_with(|c: char| c.is_ascii_digit()), "{}", q.qmp.version);
    assert_eq!(q.qmp.query_status().await.expect("status"), ("prelaunch".to_string(), false));

    // An unknown command is QEMU's refusal, and the connection stays usable.
    match q.qmp.execute("no-such-command", None).await {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    q.qmp.execute("cont", None).await.expect("cont");
    assert_eq!(q.qmp.query_status().await.expect("status"), ("running".to_string(), true));

    // Nothing is booted, so nothing answers the ACPI power button: the grace period runs out
    // and the stop is forced.
    let (how, status) = q.stop(Duration::from_millis(500)).await.expect("stop");
    assert_eq!(how, Stopped::Forced);
    assert!(status.success(), "{status}");
    assert!(!alive(pid), "no QEMU process is left");
}

#[tokio::test]
async fn machine_none_quit() {
    if !qemu_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Qemu::start(spec(dir.path(), "m0", "none")).await.expect("start");
    let pid = q.pid().expect("pid");
    let (status, running) = q.qmp.query_status().await.expect("status");
    assert_eq!((status.as_str(), running), ("prelaunch", false));
    let st = q.quit().await.expect("quit");
    assert!(st.success(), "{st}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn bad_arguments_are_reported_with_the_log() {
    if !qemu_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(dir.path(), "bad", "no-such-machine");
    s.paused = false;
    match Qemu::start(s).await {
        Err(QemuError::EarlyExit { status, tail, .. }) => {
            assert!(!status.success());
            assert!(tail.contains("unsupported machine type"), "{tail}");
        }
        Err(e) => panic!("expected EarlyExit, got {e}"),
        Ok(_) => panic!("QEMU started with a bad machine type"),
    }
}

#[tokio::test]
async fn missing_binary_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    match Qemu::start_with("/nonexistent/qemu-system-x86_64", spec(dir.path(), "x", "none")).await {
        Err(QemuError::Spawn { binary, .. }) => assert_eq!(binary, "/nonexistent/qemu-system-x86_64"),
        Err(e) => panic!("expected Spawn, got {e}"),
        Ok(_) => panic!("started a missing binary"),
    }
}
