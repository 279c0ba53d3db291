//! `pmem symbols` on the committed BTF sample (crates/pmem-symbols/tests/
//! data/sample.btf, a real pahole output): the ISF file, its mode, and the
//! errors for bad input, each naming the file.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn sample_btf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmem-symbols/tests/data/sample.btf")
}

const KALLSYMS: &str = "\
ffffffff9d000000 T _text
ffffffff9d000000 T startup_64
ffffffff9e60a940 D init_task
ffffffff9e2001a0 R linux_banner
";
const BANNER: &str = "Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)\n";

/// `pmem symbols --btf BTF --kallsyms KALLSYMS`, other options to add.
fn symbols(btf: &Path, kallsyms: &Path) -> Command {
    let mut command = Command::cargo_bin("pmem").unwrap();
    command
        .arg("symbols")
        .arg("--btf")
        .arg(btf)
        .arg("--kallsyms")
        .arg(kallsyms);
    command
}

fn inputs(dir: &Path, kallsyms: &str) -> (PathBuf, PathBuf) {
    let kallsyms_path = dir.join("kallsyms");
    std::fs::write(&kallsyms_path, kallsyms).unwrap();
    let banner_path = dir.join("version");
    std::fs::write(&banner_path, BANNER).unwrap();
    (kallsyms_path, banner_path)
}

#[test]
fn writes_an_owner_only_isf_named_by_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let (kallsyms, banner) = inputs(dir.path(), KALLSYMS);
    let out = dir.path().join("symbols");
    symbols(&sample_btf(), &kallsyms)
        .arg("--version-file")
        .arg(&banner)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("6.1.0-28-amd64.json.xz"))
        .stderr(predicate::str::contains("KASLR offset 0x1c000000"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let isf = out.join("linux/6.1.0-28-amd64.json.xz");
        let mode = std::fs::metadata(&isf).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An explicit offset wins over the derived one (no message about it).
    symbols(&sample_btf(), &kallsyms)
        .args(["--kaslr-offset", "0x1c000000", "--name", "given"])
        .arg("--banner")
        .arg(&banner)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("KASLR").not());
    assert!(out.join("linux/given.json.xz").exists());
}

#[test]
fn truncated_btf_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (kallsyms, _) = inputs(dir.path(), KALLSYMS);
    let truncated = dir.path().join("truncated.btf");
    let blob = std::fs::read(sample_btf()).unwrap();
    std::fs::write(&truncated, &blob[..100]).unwrap();
    symbols(&truncated, &kallsyms)
        .arg("-o")
        .arg(dir.path().join("out"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "truncated.btf: BTF at byte offset 8 (0x8)",
        ));
}

#[test]
fn hidden_kallsyms_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let hidden: String = KALLSYMS
        .lines()
        .map(|l| format!("0000000000000000{}\n", &l[16..]))
        .collect();
    let (kallsyms, _) = inputs(dir.path(), &hidden);
    symbols(&sample_btf(), &kallsyms)
        .arg("-o")
        .arg(dir.path().join("out"))
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("every address is 0")
                .and(predicate::str::contains("kptr_restrict")),
        );
}
