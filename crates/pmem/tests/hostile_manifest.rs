//! The manifest is input too: `verify`, `info` and `convert` read the one
//! beside an image, and for raw and AVML images take ranges from it. Every
//! field of a real manifest is replaced in turn by hostile values (wrong
//! types, extremes, malformed hex, huge arrays), and the file is cut and
//! flipped byte by byte; each command must answer with exit 0 or 1 (a clear
//! error), never a panic (101), a signal or a hang. This runs the real
//! binary, so the whole path from the file to the checks is covered.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;

mod common;
use common::*;

/// A LiME image of two ranges (text and zeros), converted by pmem to
/// `format` so that a real manifest lies beside it.
fn image(dir: &Path, format: &str) -> std::path::PathBuf {
    let mut lime = Vec::new();
    for (start, len, fill) in [(0x1000u64, 0x9e000u64, 0x41u8), (0x100000, 0x200000, 0)] {
        lime.extend_from_slice(&0x4C69_4D45u32.to_le_bytes());
        lime.extend_from_slice(&1u32.to_le_bytes());
        lime.extend_from_slice(&start.to_le_bytes());
        lime.extend_from_slice(&(start + len - 1).to_le_bytes());
        lime.extend_from_slice(&0u64.to_le_bytes());
        lime.extend((0..len).map(|i| fill.wrapping_add((i / 4096) as u8)));
    }
    let input = dir.join("in.lime");
    std::fs::write(&input, lime).unwrap();
    let mut out = dir.join(format!("image.{format}"));
    let mut args = vec!["convert", "-q", "--arch", "x86_64", "--format"];
    if format == "avml" {
        args.extend(["lime", "--compress", "snappy"]);
    } else {
        args.push(format);
    }
    if format == "avml" {
        out = dir.join("image.avml");
    }
    pmem().args(&args).arg(&input).arg(&out).assert().success();
    out
}

/// Values no field of a manifest should hold.
fn hostile_values() -> Vec<Value> {
    let many: Vec<Value> = (0..20_000u64)
        .map(|i| {
            let start = 0x1_0000_0000 + i * 0x2000;
            serde_json::json!({"start": format!("{start:#x}"), "last": format!("{:#x}", start + 0xfff), "bytes": 4096})
        })
        .collect();
    vec![
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e308),
        serde_json::json!(""),
        serde_json::json!("0xffffffffffffffff"),
        serde_json::json!("0x"),
        serde_json::json!("zz"),
        serde_json::json!([]),
        serde_json::json!({}),
        Value::Array(many),
    ]
}

/// Every path to a value in `v` (object keys and array indexes, the first
/// two elements of an array only).
fn paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(Value::from(key.as_str()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(2) {
                prefix.push(Value::from(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn set(root: &mut Value, path: &[Value], value: Value) {
    let mut at = root;
    for step in path {
        at = match step {
            Value::String(key) => &mut at[key.as_str()],
            Value::Number(i) => &mut at[i.as_u64().unwrap() as usize],
            _ => unreachable!(),
        };
    }
    *at = value;
}

/// `verify` and `info` (and `convert` when `convert` is set) on the image
/// with `manifest_bytes` beside it: exit 0 or 1 within the time limit.
fn survives(image: &Path, manifest_bytes: &[u8], what: &str, convert: bool) {
    let manifest_path = {
        let mut p = image.as_os_str().to_owned();
        p.push(".json");
        std::path::PathBuf::from(p)
    };
    std::fs::write(&manifest_path, manifest_bytes).unwrap();
    let dir = image.parent().unwrap();
    let mut runs: Vec<Vec<String>> = vec![
        vec!["verify".into(), image.display().to_string()],
        vec!["info".into(), "--json".into(), image.display().to_string()],
    ];
    if convert {
        let out = dir.join("converted.lime");
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(dir.join("converted.lime.json"));
        runs.push(vec![
            "convert".into(),
            "-q".into(),
            "--format".into(),
            "lime".into(),
            image.display().to_string(),
            out.display().to_string(),
        ]);
    }
    for args in runs {
        let out = pmem()
            .args(&args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "{what}: pmem {} ended with {:?}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn hostile_manifest_fields_give_errors_not_panics() {
    for format in ["raw", "avml", "lime"] {
        let dir = tempfile::tempdir().unwrap();
        let image = image(dir.path(), format);
        let good = manifest(&image);
        let mut all = Vec::new();
        paths(&good, &mut Vec::new(), &mut all);
        assert!(all.len() > 30, "{format}: {} paths", all.len());
        for path in &all {
            for (i, value) in hostile_values().into_iter().enumerate() {
                let mut bad = good.clone();
                set(&mut bad, path, value);
                // convert only for the range lists (it reads them for raw
                // and AVML images): the rest is covered by verify and info.
                let ranges = path.first() == Some(&Value::from("ranges"));
                survives(
                    &image,
                    &serde_json::to_vec(&bad).unwrap(),
                    &format!("{format} {path:?} <- value {i}"),
                    ranges,
                );
            }
        }
    }
}

#[test]
fn cut_and_flipped_manifests_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), "raw");
    let good = serde_json::to_vec_pretty(&manifest(&image)).unwrap();
    // Cut at 40 places, then 200 single-byte changes at pseudo-random
    // places (a fixed LCG: the same cases every run).
    for i in 0..40 {
        let at = good.len() * i / 40;
        survives(&image, &good[..at], &format!("cut at {at}"), false);
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (state >> 33) as usize % good.len();
        let byte = (state >> 8) as u8;
        let mut bad = good.clone();
        bad[at] = byte;
        survives(&image, &bad, &format!("byte {at} = {byte:#x}"), true);
    }
}
