//! A full disk under the data directory: submissions answer "disk full" (never a false
//! "shutting down"), nothing unacknowledged is announced, the store recovers once space returns,
//! and every acknowledged job is there after a restart.
//!
//! Needs a 2 MB tmpfs, so it runs as root (CI containers); elsewhere it prints why it skipped.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use agora_node::{FileConfig, Node, NodeConfig, SubmitError, SubmitRequest};
use agora_types::Hash;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.path().to_path_buf(), dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes to `path` until the disk is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 16 * 1024];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => break,
        }
    }
    // Small writes too, until not even one byte fits.
    while let Ok(1) = f.write(&[0]) {
        n += 1;
    }
    let _ = f.sync_all();
    n
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig::validate(FileConfig {
        data_dir: Some(dir.to_path_buf()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".into()]),
        mdns: Some(false),
        executor_slots: Some(1),
        ..Default::default()
    })
    .unwrap()
}

fn request(module: Hash, i: u64) -> SubmitRequest {
    SubmitRequest {
        module,
        args: vec![format!("job-{i}"); 8],
        redundancy: Some(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_clearly_recovers_and_loses_nothing_acknowledged() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED disk_full test: {why} (needs root to mount a tmpfs)");
            return;
        }
    };
    let data = fs.0.join("data");
    let filler = fs.0.join("filler");
    let wasm = wat::parse_str(r#"(module (memory 1) (func (export "_start")))"#).unwrap();

    let node = Node::start(config(&data)).await.unwrap();
    let h = node.handle();
    let module = h.put_blob(wasm.clone()).await.unwrap();
    let mut acknowledged = vec![h.submit(request(module, 0)).await.unwrap()];

    // Fill the disk; keep submitting until the node says the disk is full.
    fill(&filler);
    let mut refusal = None;
    for i in 1..400 {
        match h.submit(request(module, i)).await {
            Ok(id) => acknowledged.push(id),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the full disk never refused a submission");
    println!(
        "{} jobs acknowledged before the disk was full; then: {refusal}",
        acknowledged.len()
    );
    assert!(
        matches!(refusal, SubmitError::DiskFull(_)),
        "not a disk-full error: {refusal:?}"
    );
    let text = refusal.to_string();
    assert!(text.contains("disk full"), "{text}");
    assert!(!text.contains("shutting down"), "{text}");
    // Nothing that was refused is known to the market (so nothing of it was announced).
    let known = h.jobs().await;
    assert_eq!(
        known.len(),
        acknowledged.len(),
        "the node tracks jobs it refused"
    );

    // Space returns: the store recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = None;
    for i in 1000..1020 {
        match h.submit(request(module, i)).await {
            Ok(id) => {
                recovered = Some(id);
                break;
            }
            Err(e) => {
                println!("still failing after space returned: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    acknowledged.push(recovered.expect("the store did not recover once space returned"));
    node.shutdown().await;
    drop(h);

    // After a restart every acknowledged job is there. (In one process, tasks of the old node
    // may hold the database a moment longer.)
    let mut tries = 0;
    let node = loop {
        match Node::start(config(&data)).await {
            Ok(n) => break n,
            Err(e) if tries < 50 => {
                tries += 1;
                println!("restart: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the node does not restart: {e}"),
        }
    };
    let h = node.handle();
    for id in &acknowledged {
        assert!(
            h.job(*id).await.is_some(),
            "acknowledged job {} is gone after a restart ({} acknowledged)",
            id.short(),
            acknowledged.len()
        );
    }
    node.shutdown().await;
}
