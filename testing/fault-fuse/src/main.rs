//! `pmem-fault-fuse DIR [FAULT...]`: mounts the faulty kcore of
//! pmem_fault_fuse in DIR/mnt (RAM 0x1000-0x9efff and 1-9 MiB) for trying
//! pmem by hand, prints the `pmem acquire` arguments that read it, and
//! unmounts when its standard input closes.
//!
//! FAULT is PHYS:ERRNO (a number), PHYS:short=BYTES, PHYS:stall=MS or
//! PHYS:abort, PHYS a page address in hex (0x...) or decimal; add
//! `:times=N` to apply it to the first N requests only.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    use pmem_fault_fuse::{Action, Fault, FaultFs, Options};
    use std::process::ExitCode;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, specs)) = args.split_first() else {
        eprintln!("usage: pmem-fault-fuse DIR [PHYS:ERRNO|PHYS:short=N|PHYS:stall=MS|PHYS:abort[:times=N]]...");
        return ExitCode::from(2);
    };
    let number = |text: &str| match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    let mut faults = Vec::new();
    for spec in specs {
        let mut parts = spec.split(':');
        let phys = parts.next().and_then(number);
        let action = match parts.next().map(|a| a.split_once('=').unwrap_or((a, ""))) {
            Some(("short", n)) => number(n).map(|n| Action::Short(n as u32)),
            Some(("stall", ms)) => {
                number(ms).map(|ms| Action::Stall(std::time::Duration::from_millis(ms)))
            }
            Some(("abort", "")) => Some(Action::Abort),
            Some((code, "")) => number(code).map(|c| Action::Errno(c as i32)),
            _ => None,
        };
        let times = match parts.next() {
            None => Some(None),
            Some(t) => t
                .strip_prefix("times=")
                .and_then(number)
                .map(|n| Some(n as u32)),
        };
        match (phys, action, times) {
            (Some(phys), Some(action), Some(times)) => faults.push(Fault {
                times,
                ..Fault::page(phys, action)
            }),
            _ => {
                eprintln!("pmem-fault-fuse: cannot parse fault {spec:?}");
                return ExitCode::from(2);
            }
        }
    }
    let ram = [
        pmem_core::Range::new(0x1000, 0x9f000).unwrap(),
        pmem_core::Range::new(0x10_0000, 0x90_0000).unwrap(),
    ];
    let dir = std::path::Path::new(dir);
    let fs = match FaultFs::mount(dir, &ram, faults, Options::default()) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("pmem-fault-fuse: mounting in {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "--source kcore:{} --iomem {}",
        fs.kcore.display(),
        fs.iomem.display()
    );
    eprintln!("pmem-fault-fuse: mounted; close standard input to unmount");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    drop(fs);
    ExitCode::SUCCESS
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("pmem-fault-fuse: FUSE fault injection exists on Linux only");
    std::process::ExitCode::from(2)
}
