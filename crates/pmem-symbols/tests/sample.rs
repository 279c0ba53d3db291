//! The converter on a real BTF blob: tests/data/sample.btf, written by
//! pahole from tests/data/sample.c (see make-sample.sh). The expected
//! offsets are pahole's own (`pahole -F btf tests/data/sample.btf`).

use pmem_symbols::btf::{Btf, BtfType};
use pmem_symbols::isf::{self, Inputs, Isf};
use pmem_symbols::kallsyms::{self, KallsymsError};
use serde_json::{json, Value};

const SAMPLE_BTF: &[u8] = include_bytes!("data/sample.btf");
const BANNER: &[u8] =
    b"Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)\n";
/// A KASLR-shifted kallsyms: `_text` 0x1c000000 above x86-64's default.
const KALLSYMS: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff9d000000 T _text
ffffffff9d000000 T startup_64
ffffffff9d123450 T sample_function
ffffffff9e60a940 D init_task
ffffffff9e2001a0 R linux_banner
ffffffff9e2002a0 D taint_flags
ffffffff9e2002e0 d __func__.1
ffffffff9e700000 d tk_core
ffffffffc0a01000 t init_task\t[fakemod]
0000000000001040 A runqueue_heads
ffffffff9e600000 D modules
ffffffff9e600100 D prb
";
const KASLR_OFFSET: u64 = 0x1c00_0000;

fn sample_isf() -> Value {
    let btf = Btf::parse(SAMPLE_BTF).unwrap();
    let symbols = kallsyms::parse(KALLSYMS).unwrap();
    let offset = kallsyms::derive_x86_64_kaslr_offset(&symbols).unwrap();
    assert_eq!(offset, KASLR_OFFSET);
    let isf = isf::build(&Inputs {
        btf: &btf,
        kallsyms: &symbols,
        kallsyms_source: ("kallsyms".into(), "00".into()),
        banner: Some(BANNER),
        kaslr_offset: offset,
    })
    .unwrap();
    serde_json::to_value(&isf).unwrap()
}

#[test]
fn parses_every_kind_pahole_writes() {
    let btf = Btf::parse(SAMPLE_BTF).unwrap();
    assert!(btf.little_endian);
    let has = |pred: fn(&BtfType) -> bool| btf.types.iter().any(pred);
    assert!(has(|t| matches!(t, BtfType::Int { .. })));
    assert!(has(|t| matches!(t, BtfType::Ptr { .. })));
    assert!(has(|t| matches!(t, BtfType::Array { .. })));
    assert!(has(|t| matches!(t, BtfType::Struct(_))));
    assert!(has(|t| matches!(t, BtfType::Union(_))));
    assert!(has(|t| matches!(t, BtfType::Enum { wide: false, .. })));
    assert!(has(|t| matches!(t, BtfType::Enum { wide: true, .. })));
    assert!(has(|t| matches!(t, BtfType::Fwd { .. })));
    assert!(has(|t| matches!(t, BtfType::Typedef { .. })));
    assert!(has(|t| matches!(t, BtfType::Volatile { .. })));
    assert!(has(|t| matches!(t, BtfType::Const { .. })));
    assert!(has(|t| matches!(t, BtfType::Restrict { .. })));
    assert!(has(|t| matches!(t, BtfType::Func { .. })));
    assert!(has(|t| matches!(t, BtfType::FuncProto { .. })));
    assert!(has(|t| matches!(t, BtfType::Float { .. })));
    assert!(has(|t| matches!(t, BtfType::DeclTag { .. })));
    assert!(has(|t| matches!(t, BtfType::TypeTag { .. })));
    assert!(has(|t| matches!(t, BtfType::Var { .. })));
    assert!(has(
        |t| matches!(t, BtfType::Datasec { vars, .. } if vars.len() == 1 && vars[0].size == 16)
    ));
    // The task_struct's bitfields are in the kind_flag form.
    let task = btf
        .types
        .iter()
        .find_map(|t| match t {
            BtfType::Struct(c) if btf.name(c.name) == "task_struct" => Some(c),
            _ => None,
        })
        .unwrap();
    let in_execve = task
        .members
        .iter()
        .find(|m| btf.name(m.name) == "in_execve")
        .unwrap();
    assert_eq!(
        (in_execve.bit_offset, in_execve.bitfield_bits),
        (67, Some(1))
    );
    // The variadic parameter of sample_function: type 0, no name.
    assert!(btf.types.iter().any(|t| matches!(
        t,
        BtfType::FuncProto { params, .. } if params.last().is_some_and(|p| p.type_id == 0)
    )));
}

#[test]
fn task_struct_fields_match_pahole() {
    let isf = sample_isf();
    let task = &isf["user_types"]["task_struct"];
    assert_eq!(task["kind"], "struct");
    assert_eq!(task["size"], 120);
    let fields = &task["fields"];
    let field = |name: &str| fields[name].clone();
    assert_eq!(
        field("state"),
        json!({"type": {"kind": "base", "name": "long"}, "offset": 0})
    );
    let bitfield = |position: u32, length: u32, storage: Value| json!({"type": {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": storage}, "offset": 8});
    let unsigned = json!({"kind": "base", "name": "unsigned int"});
    assert_eq!(field("flags"), bitfield(0, 3, unsigned.clone()));
    assert_eq!(field("in_execve"), bitfield(3, 1, unsigned));
    assert_eq!(
        field("kind"),
        bitfield(4, 2, json!({"kind": "enum", "name": "pid_type"}))
    );
    // Bit 6 of byte 8, 5 bits wide: vol3 reads an int at offset 8 and
    // shifts by the position.
    assert_eq!(
        field("nice"),
        bitfield(6, 5, json!({"kind": "base", "name": "int"}))
    );
    assert_eq!(field("pid")["offset"], 12);
    // typedef struct { int counter; } atomic_t: named by the typedef.
    assert_eq!(
        field("usage"),
        json!({"type": {"kind": "struct", "name": "atomic_t"}, "offset": 16})
    );
    assert_eq!(
        isf["user_types"]["atomic_t"]["fields"]["counter"]["offset"],
        0
    );
    assert_eq!(
        field("tasks")["type"],
        json!({"kind": "struct", "name": "list_head"})
    );
    assert_eq!(field("tasks")["offset"], 32);
    assert_eq!(
        field("comm"),
        json!({"type": {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}, "offset": 48})
    );
    assert_eq!(
        field("parent")["type"],
        json!({"kind": "pointer", "subtype": {"kind": "struct", "name": "task_struct"}})
    );
    // A declared-only struct is referenced by its tag.
    assert_eq!(
        field("hidden")["type"],
        json!({"kind": "pointer", "subtype": {"kind": "struct", "name": "opaque"}})
    );
    assert_eq!(
        field("callback"),
        json!({"type": {"kind": "pointer", "subtype": {"kind": "function"}}, "offset": 80})
    );
    // Type tags (__user) and restrict are transparent.
    let char_pointer = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "char"}});
    assert_eq!(field("user_pointer")["type"], char_pointer);
    assert_eq!(field("scratch")["type"], char_pointer);
    assert_eq!(field("exiting")["offset"], 104);
    assert_eq!(
        field("load")["type"],
        json!({"kind": "base", "name": "double"})
    );
    assert_eq!(
        field("tail"),
        json!({"type": {"kind": "array", "count": 0, "subtype": {"kind": "base", "name": "unsigned char"}}, "offset": 120})
    );
}

#[test]
fn anonymous_members_are_flagged_and_named_like_dwarf2json() {
    let isf = sample_isf();
    let union_field = &isf["user_types"]["task_struct"]["fields"]["unnamed_field_0"];
    assert_eq!(union_field["anonymous"], true);
    assert_eq!(union_field["offset"], 24);
    assert_eq!(union_field["type"]["kind"], "union");
    let union_name = union_field["type"]["name"].as_str().unwrap();
    assert!(union_name.starts_with("unnamed_") && union_name.len() == 8 + 16);
    let union_type = &isf["user_types"][union_name];
    assert_eq!(union_type["kind"], "union");
    assert_eq!(union_type["size"], 8);
    assert_eq!(
        union_type["fields"]["wide"]["type"],
        json!({"kind": "base", "name": "unsigned long long"})
    );
    let inner = &union_type["fields"]["unnamed_field_0"];
    assert_eq!(inner["anonymous"], true);
    let inner_type = &isf["user_types"][inner["type"]["name"].as_str().unwrap()];
    assert_eq!(inner_type["fields"]["low"]["offset"], 0);
    assert_eq!(inner_type["fields"]["high"]["offset"], 2);
    // Named members carry no anonymous flag.
    assert!(isf["user_types"]["task_struct"]["fields"]["pid"]
        .get("anonymous")
        .is_none());
}

#[test]
fn base_types_and_enums() {
    let isf = sample_isf();
    let base = &isf["base_types"];
    assert_eq!(
        base["pointer"],
        json!({"size": 8, "signed": false, "kind": "int", "endian": "little"})
    );
    assert_eq!(
        base["void"],
        json!({"size": 0, "signed": false, "kind": "void", "endian": "little"})
    );
    assert_eq!(base["_Bool"]["kind"], "bool");
    assert_eq!(base["char"]["kind"], "char");
    assert_eq!(base["char"]["signed"], true);
    assert_eq!(base["unsigned char"]["kind"], "char");
    assert_eq!(base["unsigned char"]["signed"], false);
    assert_eq!(
        base["int"],
        json!({"size": 4, "signed": true, "kind": "int", "endian": "little"})
    );
    assert_eq!(base["unsigned int"]["signed"], false);
    assert_eq!(base["double"]["kind"], "float");
    assert_eq!(base["long"]["size"], 8);

    let enums = &isf["enums"];
    assert_eq!(
        enums["pid_type"],
        json!({"size": 4, "base": "unsigned int", "constants": {"PIDTYPE_PID": 0, "PIDTYPE_TGID": 1, "PIDTYPE_MAX": 2}})
    );
    assert_eq!(enums["signed_values"]["base"], "int");
    assert_eq!(enums["signed_values"]["constants"]["NEGATIVE"], -2);
    assert_eq!(enums["wide_values"]["size"], 8);
    assert_eq!(
        enums["wide_values"]["constants"]["HUGE"].as_u64(),
        Some(0xfedc_ba98_7654_3210)
    );
    // clang's name for an 8-byte unsigned (the sample is built by clang).
    assert_eq!(enums["wide_values"]["base"], "unsigned long");
    let anonymous = enums
        .as_object()
        .unwrap()
        .iter()
        .find(|(name, _)| name.starts_with("unnamed_"))
        .expect("the anonymous enum");
    assert_eq!(anonymous.1["constants"], json!({"ANON_A": 7, "ANON_B": 8}));
}

#[test]
fn symbols_are_unshifted_typed_and_banner_carrying() {
    let isf = sample_isf();
    let symbols = &isf["symbols"];
    // vmlinux's init_task, not the module's; link-time address.
    assert_eq!(
        symbols["init_task"],
        json!({"address": 0xffffffff8260a940u64, "type": {"kind": "struct", "name": "task_struct"}})
    );
    assert_eq!(symbols["_text"]["address"], 0xffffffff81000000u64);
    assert_eq!(symbols["fixed_percpu_data"]["address"], 0);
    assert_eq!(
        symbols["sample_function"]["type"],
        json!({"kind": "base", "name": "void"})
    );
    // A per-CPU variable: typed by its BTF VAR; its offset is not shifted.
    assert_eq!(
        symbols["runqueue_heads"],
        json!({"address": 0x1040, "type": {"kind": "struct", "name": "list_head"}})
    );
    // Known globals: typed where this BTF has the type ...
    assert_eq!(
        symbols["modules"]["type"],
        json!({"kind": "struct", "name": "list_head"})
    );
    // ... and left void where it has not (no printk_ringbuffer here).
    assert_eq!(
        symbols["prb"]["type"],
        json!({"kind": "base", "name": "void"})
    );
    // taint_flags: 19 elements by the release (6.1), not the 21 that fit
    // in the 64 bytes to the next symbol; vol3 prints every element.
    assert_eq!(
        symbols["taint_flags"]["type"],
        json!({"kind": "array", "count": 19, "subtype": {"kind": "struct", "name": "taint_flag"}})
    );
    // tk_core: an anonymous struct, found by its members.
    let tk_core = symbols["tk_core"]["type"]["name"].as_str().unwrap();
    assert!(tk_core.starts_with("unnamed_"), "{tk_core}");
    let fields = isf["user_types"][tk_core]["fields"].as_object().unwrap();
    assert!(fields.contains_key("seq") && fields.contains_key("timekeeper"));
    let banner = &symbols["linux_banner"];
    assert_eq!(banner["address"], 0xffffffff822001a0u64);
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(banner["constant_data"].as_str().unwrap())
        .unwrap();
    let mut expected = BANNER.to_vec();
    expected.push(0);
    assert_eq!(data, expected);
    assert_eq!(banner["type"]["count"], expected.len());
    assert_eq!(isf["metadata"]["format"], "6.2.0");
    assert_eq!(isf["metadata"]["producer"]["name"], "pmem");
    assert_eq!(isf["metadata"]["linux"]["symbols"][0]["kind"], "system-map");
}

#[test]
fn wrong_banner_and_missing_banner_symbol_are_errors() {
    let btf = Btf::parse(SAMPLE_BTF).unwrap();
    let symbols = kallsyms::parse(KALLSYMS).unwrap();
    let inputs = |banner, kallsyms| Inputs {
        btf: &btf,
        kallsyms,
        kallsyms_source: ("kallsyms".into(), "00".into()),
        banner,
        kaslr_offset: 0,
    };
    assert_eq!(
        isf::build(&inputs(Some(b"6.1.0-28-amd64\n"), &symbols)).unwrap_err(),
        isf::IsfError::NotABanner
    );
    let without_banner = &symbols[..5];
    assert_eq!(
        isf::build(&inputs(Some(BANNER), without_banner)).unwrap_err(),
        isf::IsfError::NoBannerSymbol
    );
    assert!(isf::build(&inputs(None, without_banner)).is_ok());
}

#[test]
fn hidden_kallsyms_is_its_own_error() {
    let hidden = KALLSYMS
        .lines()
        .map(|l| format!("0000000000000000{}\n", &l[16..]))
        .collect::<String>();
    let lines = KALLSYMS.lines().count();
    assert!(matches!(
        kallsyms::parse(&hidden),
        Err(KallsymsError::AddressesHidden { symbols }) if symbols == lines
    ));
}

#[test]
fn every_truncation_is_an_error_naming_an_offset() {
    for len in 0..SAMPLE_BTF.len() {
        let err = Btf::parse(&SAMPLE_BTF[..len]).unwrap_err();
        assert!(err.offset <= SAMPLE_BTF.len(), "{len}: {err}");
        assert!(err.to_string().contains("byte offset"), "{err}");
    }
}

#[test]
fn bad_references_and_kinds_name_the_record() {
    // The first type record starts right after the 24-byte header; make
    // its kind 31 (unknown).
    let mut blob = SAMPLE_BTF.to_vec();
    blob[24 + 7] = 0x1f;
    let err = Btf::parse(&blob).unwrap_err();
    assert_eq!(err.offset, 24 + 4, "{err}");
    assert!(err.to_string().contains("unknown BTF kind 31"), "{err}");
    // Bad magic.
    let err = Btf::parse(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap_err();
    assert_eq!(err.offset, 0);
    assert!(err.to_string().contains("an ELF file"), "{err}");
    let err = Btf::parse(b"PK\x03\x04").unwrap_err();
    assert!(err.to_string().contains("not BTF: magic 504b"), "{err}");
}

#[test]
fn writes_owner_only_xz_that_decodes_to_the_isf() {
    let btf = Btf::parse(SAMPLE_BTF).unwrap();
    let symbols = kallsyms::parse(KALLSYMS).unwrap();
    let isf: Isf = isf::build(&Inputs {
        btf: &btf,
        kallsyms: &symbols,
        kallsyms_source: ("kallsyms".into(), "00".into()),
        banner: Some(BANNER),
        kaslr_offset: KASLR_OFFSET,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = pmem_symbols::isf_name(Some(BANNER), "ab");
    assert_eq!(name, "6.1.0-28-amd64");
    let path = pmem_symbols::write_isf(&isf, dir.path(), &name).unwrap();
    assert_eq!(path, dir.path().join("linux/6.1.0-28-amd64.json.xz"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Written twice: replaced, not refused.
    pmem_symbols::write_isf(&isf, dir.path(), &name).unwrap();
    let compressed = std::fs::read(&path).unwrap();
    assert_eq!(&compressed[..6], b"\xfd7zXZ\0");
    let mut json = String::new();
    use std::io::Read;
    // Decoded again here by the same crate; testing/symbols/isf-check.sh
    // has Python's lzma (what vol3 uses) read it.
    lzma_rust2::XzReader::new(&compressed[..], false)
        .read_to_string(&mut json)
        .unwrap();
    let decoded: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(decoded, serde_json::to_value(&isf).unwrap());
    assert_eq!(
        pmem_symbols::isf_name(None, "0123456789abcdef"),
        "btf-0123456789ab"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// Corrupt blobs give errors or an ISF, never a panic (nor endless
    /// recursion on reference cycles).
    #[test]
    fn corrupted_blobs_never_panic(flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8)) {
        let mut blob = SAMPLE_BTF.to_vec();
        for (at, value) in flips {
            let at = at % blob.len();
            blob[at] = value;
        }
        if let Ok(btf) = Btf::parse(&blob) {
            let symbols = kallsyms::parse(KALLSYMS).unwrap();
            let _ = isf::build(&Inputs {
                btf: &btf,
                kallsyms: &symbols,
                kallsyms_source: ("kallsyms".into(), "00".into()),
                banner: None,
                kaslr_offset: 0,
            });
        }
    }

    /// Arbitrary bytes behind a valid magic and header.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let mut blob = SAMPLE_BTF[..24].to_vec();
        blob.extend(tail);
        let _ = Btf::parse(&blob);
    }
}
