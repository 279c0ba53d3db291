//! A test PKI made by `openssl`. Only std: the pmem-upload tests and
//! pmem's unit tests include this file by path too (`#[path]`), as well as
//! pmem's integration tests (through common/mod.rs).

use std::path::{Path, PathBuf};

fn openssl(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA made by `openssl` in `dir`, and a certificate for localhost
/// and 127.0.0.1 signed by it: the paths of the CA certificate, the
/// server's certificate and its key.
pub fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ossl = || {
        let mut c = std::process::Command::new("openssl");
        c.current_dir(dir);
        c
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        ossl()
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"])
            .args(["-subj", "/CN=pmem test CA"]),
    );
    openssl(ossl().arg("req").args(ec).args([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]));
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(ossl().args([
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]));
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}
