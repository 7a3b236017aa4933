//! Timing of a linked-clone root volume create (`Storage::create_volume` with a backing file),
//! the step the boot benchmark counts in rzstack's own overhead. Not a pass/fail test: run with
//! `cargo test -p rzstack-agent --release --test volume_create_timing -- --ignored --nocapture`.
mod common;
use common::*;
use rzstack_agent::storage::Storage;
use rzstack_api::agent::{Provisioning, VolumeCreateCmd, PROTOCOL_VERSION};

#[tokio::test]
#[ignore]
async fn linked_clone_create_time() {
    if !require("volume_create_timing", &[("qemu-img", "qemu-utils")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("image.qcow2").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "1G"]);
    let st = Storage::new(d.path().to_path_buf());
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(50);
    let mut ms = Vec::new();
    for i in 0..runs + 1 {
        let u = uuid();
        let cmd = VolumeCreateCmd {
            version: PROTOCOL_VERSION,
            volume_uuid: u.clone(),
            install_path: d.path().join(format!("ps/rootVolumes/vol-{u}/{u}.qcow2")).to_string_lossy().into_owned(),
            size: 2 << 30,
            backing_file: Some(img.clone()),
            provisioning: Provisioning::ThinProvisioning,
        };
        let t0 = std::time::Instant::now();
        st.create_volume(&cmd).await.unwrap();
        // The first create also reads the image's info (remembered after): not counted.
        if i > 0 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    report("Storage::create_volume (linked clone)", runs, ms);
    // For comparison, under the same load: the `qemu-img create` the agent ran before (and
    // still runs when the direct writer fails), alone.
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t = d.path().join(format!("ps/{}.qcow2", uuid())).to_string_lossy().into_owned();
        let t0 = std::time::Instant::now();
        rzstack_agent::sys::run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &img, &t, "2147483648"],
        )
        .await
        .unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    report("qemu-img create spawn alone", runs, ms);
}

fn report(what: &str, runs: usize, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{what} over {runs} runs: median {:.3} ms, mean {mean:.3} ms, min {:.3} ms, p90 {:.3} ms",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() * 9 / 10]
    );
}
