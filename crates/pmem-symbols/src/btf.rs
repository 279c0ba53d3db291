//! The BPF Type Format as the kernel exports it in `/sys/kernel/btf/vmlinux`
//! (and keeps in its `.BTF` section): a header, a type section and a string
//! section. The layout is the kernel's `include/uapi/linux/btf.h` and
//! `Documentation/bpf/btf.rst`.
//!
//! Every read is bounds-checked: a short or corrupt blob gives a
//! [`BtfError`] that names the byte offset in the blob and what was being
//! read there, never a panic.

use std::fmt;

/// The BTF magic number, `0xeB9F`, as the first two bytes of a blob in the
/// byte order of the machine that wrote it.
const BTF_MAGIC: u16 = 0xeb9f;
/// The smallest header (version 1) this parser understands.
const MIN_HEADER_LEN: u32 = 24;
/// Size of `struct btf_type`: name_off, info, size-or-type.
const TYPE_RECORD_LEN: usize = 12;

/// A BTF type id: an index into [`Btf::types`]. Id 0 is `void`.
pub type TypeId = u32;

/// Bad BTF: where in the blob and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BTF at byte offset {offset} (0x{offset:x}): {problem}")]
pub struct BtfError {
    /// Byte offset into the blob of the field that could not be read or
    /// is inconsistent.
    pub offset: usize,
    /// What was expected there.
    pub problem: String,
}

fn fail<T>(offset: usize, problem: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError {
        offset,
        problem: problem.into(),
    })
}

/// A name: an offset into the string section, checked at parse time to
/// point at a NUL-terminated UTF-8 string; [`Btf::name`] turns it into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name(u32);

/// How a BTF integer is interpreted (`BTF_INT_ENCODING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntEncoding {
    /// `BTF_INT_SIGNED`.
    pub signed: bool,
    /// `BTF_INT_CHAR`.
    pub char: bool,
    /// `BTF_INT_BOOL`.
    pub bool: bool,
}

/// One member of a struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member name; anonymous for an unnamed nested struct or union.
    pub name: Name,
    /// Member type.
    pub type_id: TypeId,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
    /// Width of a bitfield in bits, when the struct's `kind_flag` encodes
    /// it in the member (the form pahole writes); `None` for a whole
    /// member, or for the older form where the bitfield width lives in the
    /// INT type the member points to.
    pub bitfield_bits: Option<u32>,
}

/// A struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// Tag name; anonymous for `struct { ... } x`.
    pub name: Name,
    /// Size in bytes.
    pub size: u32,
    /// Members in declaration order.
    pub members: Vec<Member>,
}

/// One enumerator of an ENUM or ENUM64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enumerator {
    /// Constant name.
    pub name: Name,
    /// Value, sign- or zero-extended as the enum's signedness says.
    pub value: i128,
}

/// A function parameter of a FUNC_PROTO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name (often anonymous).
    pub name: Name,
    /// Parameter type; 0 with an anonymous name marks `...`.
    pub type_id: TypeId,
}

/// One variable of a DATASEC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionVar {
    /// The VAR (or FUNC) type id.
    pub type_id: TypeId,
    /// Offset in the section.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// One BTF type, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtfType {
    /// Id 0: `void`, implicit in every blob.
    Void,
    /// BTF_KIND_INT.
    Int {
        /// C name, e.g. `long unsigned int`.
        name: Name,
        /// Storage size in bytes.
        size: u32,
        /// Signedness, char, bool.
        encoding: IntEncoding,
        /// Bit offset of the value inside the storage (old-style bitfields).
        bit_offset: u8,
        /// Number of value bits.
        bits: u8,
    },
    /// BTF_KIND_PTR.
    Ptr {
        /// Pointee.
        target: TypeId,
    },
    /// BTF_KIND_ARRAY.
    Array {
        /// Element type.
        element: TypeId,
        /// Index type (an INT).
        index: TypeId,
        /// Number of elements (0 for a flexible array).
        count: u32,
    },
    /// BTF_KIND_STRUCT.
    Struct(Composite),
    /// BTF_KIND_UNION.
    Union(Composite),
    /// BTF_KIND_ENUM (`wide` false) or BTF_KIND_ENUM64 (`wide` true).
    Enum {
        /// Tag name; anonymous for `enum { ... }`.
        name: Name,
        /// Size in bytes.
        size: u32,
        /// The kind_flag: values are signed.
        signed: bool,
        /// Whether this is an ENUM64.
        wide: bool,
        /// The constants.
        values: Vec<Enumerator>,
    },
    /// BTF_KIND_FWD: a declared but (here) undefined struct or union.
    Fwd {
        /// Tag name.
        name: Name,
        /// The kind_flag: a union rather than a struct.
        is_union: bool,
    },
    /// BTF_KIND_TYPEDEF.
    Typedef {
        /// Typedef name.
        name: Name,
        /// Aliased type.
        target: TypeId,
    },
    /// BTF_KIND_VOLATILE.
    Volatile {
        /// Qualified type.
        target: TypeId,
    },
    /// BTF_KIND_CONST.
    Const {
        /// Qualified type.
        target: TypeId,
    },
    /// BTF_KIND_RESTRICT.
    Restrict {
        /// Qualified type.
        target: TypeId,
    },
    /// BTF_KIND_FUNC: a function (its address is in kallsyms, not here).
    Func {
        /// Function name.
        name: Name,
        /// Its FUNC_PROTO.
        proto: TypeId,
        /// 0 static, 1 global, 2 extern.
        linkage: u16,
    },
    /// BTF_KIND_FUNC_PROTO.
    FuncProto {
        /// Return type (0: void).
        returns: TypeId,
        /// Parameters.
        params: Vec<Param>,
    },
    /// BTF_KIND_VAR: in vmlinux BTF, the per-CPU variables only.
    Var {
        /// Variable name.
        name: Name,
        /// Variable type.
        type_id: TypeId,
        /// 0 static, 1 global, 2 extern.
        linkage: u32,
    },
    /// BTF_KIND_DATASEC.
    Datasec {
        /// Section name, e.g. `.data..percpu`.
        name: Name,
        /// Section size.
        size: u32,
        /// The variables in it.
        vars: Vec<SectionVar>,
    },
    /// BTF_KIND_FLOAT.
    Float {
        /// C name.
        name: Name,
        /// Size in bytes.
        size: u32,
    },
    /// BTF_KIND_DECL_TAG: an attribute on a declaration.
    DeclTag {
        /// Tag text.
        name: Name,
        /// Tagged type.
        target: TypeId,
        /// Member or parameter index, -1 for the type itself.
        component: i32,
    },
    /// BTF_KIND_TYPE_TAG: an attribute on a type (`__user`, `__rcu`).
    TypeTag {
        /// Tag text.
        name: Name,
        /// Tagged type.
        target: TypeId,
    },
}

/// A parsed BTF blob.
pub struct Btf {
    /// Whether the blob is little-endian (the byte order of the kernel
    /// that wrote it).
    pub little_endian: bool,
    /// All types; index = type id, entry 0 is [`BtfType::Void`].
    pub types: Vec<BtfType>,
    strings: Vec<u8>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("little_endian", &self.little_endian)
            .field("types", &self.types.len())
            .field("string_bytes", &self.strings.len())
            .finish()
    }
}

/// A bounds-checked reader over the blob in its byte order.
struct Reader<'a> {
    blob: &'a [u8],
    little_endian: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, offset: usize, what: &str) -> Result<[u8; N], BtfError> {
        match offset
            .checked_add(N)
            .and_then(|end| self.blob.get(offset..end))
        {
            Some(bytes) => Ok(bytes.try_into().expect("slice of length N")),
            None => fail(
                offset,
                format!(
                    "{what}: blob ends at {} bytes, {N} more needed",
                    self.blob.len()
                ),
            ),
        }
    }

    /// [`bytes`](Self::bytes) in little-endian order, whatever the blob's.
    fn le_bytes<const N: usize>(&self, offset: usize, what: &str) -> Result<[u8; N], BtfError> {
        let mut bytes = self.bytes::<N>(offset, what)?;
        if !self.little_endian {
            bytes.reverse();
        }
        Ok(bytes)
    }

    fn u16(&self, offset: usize, what: &str) -> Result<u16, BtfError> {
        self.le_bytes(offset, what).map(u16::from_le_bytes)
    }

    fn u32(&self, offset: usize, what: &str) -> Result<u32, BtfError> {
        self.le_bytes(offset, what).map(u32::from_le_bytes)
    }
}

/// A section's byte range in the blob, checked to lie inside it.
fn section(
    blob: &[u8],
    header_len: u32,
    start: u32,
    len: u32,
    field_offset: usize,
    what: &str,
) -> Result<std::ops::Range<usize>, BtfError> {
    let begin = header_len as u64 + start as u64;
    let end = begin + len as u64;
    if end > blob.len() as u64 {
        return fail(
            field_offset,
            format!(
                "{what} section [{begin}, {end}) runs past the end of the {}-byte blob",
                blob.len()
            ),
        );
    }
    Ok(begin as usize..end as usize)
}

impl Btf {
    /// Parses a raw BTF blob (the content of `/sys/kernel/btf/vmlinux`).
    pub fn parse(blob: &[u8]) -> Result<Btf, BtfError> {
        let little_endian = match blob.get(0..2) {
            Some(&[0x9f, 0xeb]) => true,
            Some(&[0xeb, 0x9f]) => false,
            Some(_) if blob.starts_with(b"\x7fELF") => return fail(
                0,
                "an ELF file, not a raw BTF blob: give /sys/kernel/btf/vmlinux, or extract the \
                     section (objcopy --dump-section .BTF=FILE vmlinux)",
            ),
            Some(other) => {
                return fail(
                    0,
                    format!(
                        "not BTF: magic {:02x}{:02x}, expected eb9f in either byte order",
                        other[0], other[1]
                    ),
                )
            }
            None => return fail(0, "not BTF: shorter than the 2-byte magic"),
        };
        let reader = Reader {
            blob,
            little_endian,
        };
        debug_assert_eq!(reader.u16(0, "magic")?, BTF_MAGIC);
        let version = reader.bytes::<1>(2, "version")?[0];
        if version != 1 {
            return fail(2, format!("BTF version {version}, only version 1 is known"));
        }
        let header_len = reader.u32(4, "header length")?;
        if header_len < MIN_HEADER_LEN {
            return fail(
                4,
                format!("header length {header_len}, at least {MIN_HEADER_LEN} expected"),
            );
        }
        let type_range = section(
            blob,
            header_len,
            reader.u32(8, "type section offset")?,
            reader.u32(12, "type section length")?,
            8,
            "type",
        )?;
        let string_range = section(
            blob,
            header_len,
            reader.u32(16, "string section offset")?,
            reader.u32(20, "string section length")?,
            16,
            "string",
        )?;
        let strings = blob[string_range.clone()].to_vec();
        if strings.first().is_some_and(|&b| b != 0) {
            return fail(
                string_range.start,
                "string section does not start with the empty string",
            );
        }
        let parser = TypeParser {
            reader,
            strings: &strings,
            string_start: string_range.start,
        };
        let mut types = vec![BtfType::Void];
        // Where each type's record starts, to name it in later errors.
        let mut record_offsets = vec![type_range.start];
        let mut offset = type_range.start;
        while offset < type_range.end {
            record_offsets.push(offset);
            let (parsed, next) = parser.parse_type(offset, type_range.end)?;
            types.push(parsed);
            offset = next;
        }
        check_references(&types, &record_offsets)?;
        Ok(Btf {
            little_endian,
            types,
            strings,
        })
    }

    /// The text of a name (empty for anonymous).
    pub fn name(&self, name: Name) -> &str {
        let tail = &self.strings[name.0 as usize..];
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        // Checked at parse time: in bounds, NUL-terminated and UTF-8.
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// The type with this id, if there is one.
    pub fn get(&self, id: TypeId) -> Option<&BtfType> {
        self.types.get(id as usize)
    }
}

struct TypeParser<'a> {
    reader: Reader<'a>,
    strings: &'a [u8],
    string_start: usize,
}

impl TypeParser<'_> {
    fn name(&self, offset: usize) -> Result<Name, BtfError> {
        let name_offset = self.reader.u32(offset, "name offset")?;
        let Some(tail) = self.strings.get(name_offset as usize..) else {
            return fail(
                offset,
                format!(
                    "name offset {name_offset} is past the {}-byte string section",
                    self.strings.len()
                ),
            );
        };
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            return fail(
                self.string_start + name_offset as usize,
                "string is not NUL-terminated before the string section ends",
            );
        };
        if std::str::from_utf8(&tail[..end]).is_err() {
            return fail(
                self.string_start + name_offset as usize,
                "string is not UTF-8",
            );
        }
        Ok(Name(name_offset))
    }

    /// Parses the type record at `offset`; returns it and the offset of
    /// the next record.
    fn parse_type(&self, offset: usize, end: usize) -> Result<(BtfType, usize), BtfError> {
        let r = &self.reader;
        if offset + TYPE_RECORD_LEN > end {
            return fail(
                offset,
                format!(
                    "type record needs {TYPE_RECORD_LEN} bytes, the type section ends at {end}"
                ),
            );
        }
        let name = self.name(offset)?;
        let info = r.u32(offset + 4, "type info")?;
        let size_or_type = r.u32(offset + 8, "type size or type")?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let body = offset + TYPE_RECORD_LEN;
        // Size of the kind's trailing data: fixed, or `vlen` records.
        let trailer = |record_len: usize| vlen * record_len;
        let (parsed, body_len) = match kind {
            1 => {
                let data = r.u32(body, "INT encoding")?;
                let encoding = (data >> 24) & 0x0f;
                let bits = data & 0xff;
                let bit_offset = (data >> 16) & 0xff;
                // The kernel's own check (btf_int_check_meta).
                if !matches!(size_or_type, 1 | 2 | 4 | 8 | 16)
                    || bits > 128
                    || (bit_offset + bits) as u64 > size_or_type as u64 * 8
                {
                    return fail(
                        body,
                        format!(
                            "INT of {size_or_type} bytes with {bits} bits at bit offset {bit_offset}: not a valid integer"
                        ),
                    );
                }
                let parsed = BtfType::Int {
                    name,
                    size: size_or_type,
                    encoding: IntEncoding {
                        signed: encoding & 1 != 0,
                        char: encoding & 2 != 0,
                        bool: encoding & 4 != 0,
                    },
                    bit_offset: bit_offset as u8,
                    bits: bits as u8,
                };
                (parsed, 4)
            }
            2 => (
                BtfType::Ptr {
                    target: size_or_type,
                },
                0,
            ),
            3 => (
                BtfType::Array {
                    element: r.u32(body, "ARRAY element type")?,
                    index: r.u32(body + 4, "ARRAY index type")?,
                    count: r.u32(body + 8, "ARRAY element count")?,
                },
                12,
            ),
            4 | 5 => {
                let members = records(body, vlen, 12, end, "struct member", |at| {
                    let raw_offset = r.u32(at + 8, "member offset")?;
                    let (bit_offset, bitfield_bits) = if kind_flag {
                        let bits = raw_offset >> 24;
                        (raw_offset & 0x00ff_ffff, (bits != 0).then_some(bits))
                    } else {
                        (raw_offset, None)
                    };
                    Ok(Member {
                        name: self.name(at)?,
                        type_id: r.u32(at + 4, "member type")?,
                        bit_offset,
                        bitfield_bits,
                    })
                })?;
                let composite = Composite {
                    name,
                    size: size_or_type,
                    members,
                };
                let parsed = if kind == 4 {
                    BtfType::Struct(composite)
                } else {
                    BtfType::Union(composite)
                };
                (parsed, trailer(12))
            }
            6 | 19 => {
                let wide = kind == 19;
                let record_len = if wide { 12 } else { 8 };
                let values = records(body, vlen, record_len, end, "enumerator", |at| {
                    let low = r.u32(at + 4, "enumerator value")?;
                    let value = if wide {
                        let high = r.u32(at + 8, "enumerator value, high half")?;
                        let raw = (high as u64) << 32 | low as u64;
                        if kind_flag {
                            raw as i64 as i128
                        } else {
                            raw as i128
                        }
                    } else if kind_flag {
                        low as i32 as i128
                    } else {
                        low as i128
                    };
                    Ok(Enumerator {
                        name: self.name(at)?,
                        value,
                    })
                })?;
                let parsed = BtfType::Enum {
                    name,
                    size: size_or_type,
                    signed: kind_flag,
                    wide,
                    values,
                };
                (parsed, trailer(record_len))
            }
            7 => (
                BtfType::Fwd {
                    name,
                    is_union: kind_flag,
                },
                0,
            ),
            8 => (
                BtfType::Typedef {
                    name,
                    target: size_or_type,
                },
                0,
            ),
            9 => (
                BtfType::Volatile {
                    target: size_or_type,
                },
                0,
            ),
            10 => (
                BtfType::Const {
                    target: size_or_type,
                },
                0,
            ),
            11 => (
                BtfType::Restrict {
                    target: size_or_type,
                },
                0,
            ),
            12 => (
                BtfType::Func {
                    name,
                    proto: size_or_type,
                    linkage: vlen as u16,
                },
                0,
            ),
            13 => {
                let params = records(body, vlen, 8, end, "function parameter", |at| {
                    Ok(Param {
                        name: self.name(at)?,
                        type_id: r.u32(at + 4, "parameter type")?,
                    })
                })?;
                (
                    BtfType::FuncProto {
                        returns: size_or_type,
                        params,
                    },
                    trailer(8),
                )
            }
            14 => (
                BtfType::Var {
                    name,
                    type_id: size_or_type,
                    linkage: r.u32(body, "VAR linkage")?,
                },
                4,
            ),
            15 => {
                let vars = records(body, vlen, 12, end, "DATASEC variable", |at| {
                    Ok(SectionVar {
                        type_id: r.u32(at, "DATASEC variable type")?,
                        offset: r.u32(at + 4, "DATASEC variable offset")?,
                        size: r.u32(at + 8, "DATASEC variable size")?,
                    })
                })?;
                (
                    BtfType::Datasec {
                        name,
                        size: size_or_type,
                        vars,
                    },
                    trailer(12),
                )
            }
            16 => (
                BtfType::Float {
                    name,
                    size: size_or_type,
                },
                0,
            ),
            17 => (
                BtfType::DeclTag {
                    name,
                    target: size_or_type,
                    component: r.u32(body, "DECL_TAG component index")? as i32,
                },
                4,
            ),
            18 => (
                BtfType::TypeTag {
                    name,
                    target: size_or_type,
                },
                0,
            ),
            unknown => {
                return fail(
                    offset + 4,
                    format!("unknown BTF kind {unknown} (this parser knows kinds 1 to 19)"),
                )
            }
        };
        let next = body + body_len;
        if next > end {
            return fail(
                offset,
                format!(
                    "type record with its {body_len} trailing bytes runs past the end of the type section at {end}"
                ),
            );
        }
        Ok((parsed, next))
    }
}

/// The `vlen` records of `record_len` bytes that follow a type at `body`
/// (struct members, enumerators, parameters, variables), each checked to
/// lie inside the type section (which ends at `end`) and read by `read`
/// from its offset.
fn records<T>(
    body: usize,
    vlen: usize,
    record_len: usize,
    end: usize,
    what: &str,
    mut read: impl FnMut(usize) -> Result<T, BtfError>,
) -> Result<Vec<T>, BtfError> {
    let mut records = Vec::with_capacity(vlen.min(1 << 12));
    for i in 0..vlen {
        let at = body + i * record_len;
        check_in_section(at, record_len, end, what)?;
        records.push(read(at)?);
    }
    Ok(records)
}

fn check_in_section(at: usize, len: usize, end: usize, what: &str) -> Result<(), BtfError> {
    if at + len > end {
        return fail(
            at,
            format!("{what} runs past the end of the type section at {end}"),
        );
    }
    Ok(())
}

/// Every type id a type refers to must exist: checked once here so that
/// the converter can index without checks.
fn check_references(types: &[BtfType], record_offsets: &[usize]) -> Result<(), BtfError> {
    let count = types.len();
    for (id, parsed) in types.iter().enumerate() {
        let mut refs: Vec<TypeId> = Vec::new();
        match parsed {
            BtfType::Void
            | BtfType::Int { .. }
            | BtfType::Fwd { .. }
            | BtfType::Float { .. }
            | BtfType::Enum { .. } => {}
            BtfType::Ptr { target }
            | BtfType::Typedef { target, .. }
            | BtfType::Volatile { target }
            | BtfType::Const { target }
            | BtfType::Restrict { target }
            | BtfType::DeclTag { target, .. }
            | BtfType::TypeTag { target, .. } => refs.push(*target),
            BtfType::Array { element, index, .. } => refs.extend([*element, *index]),
            BtfType::Struct(c) | BtfType::Union(c) => {
                refs.extend(c.members.iter().map(|m| m.type_id))
            }
            BtfType::Func { proto, .. } => refs.push(*proto),
            BtfType::FuncProto { returns, params } => {
                refs.push(*returns);
                refs.extend(params.iter().map(|p| p.type_id));
            }
            BtfType::Var { type_id, .. } => refs.push(*type_id),
            BtfType::Datasec { vars, .. } => refs.extend(vars.iter().map(|v| v.type_id)),
        }
        if let Some(bad) = refs.iter().find(|&&r| r as usize >= count) {
            return fail(
                record_offsets[id],
                format!(
                    "type {id} refers to type {bad}, but the blob has only {} types",
                    count - 1
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Reader;

    #[test]
    fn fields_are_read_in_the_blobs_byte_order() {
        let blob = [0x12, 0x34, 0x56, 0x78];
        let le = Reader {
            blob: &blob,
            little_endian: true,
        };
        let be = Reader {
            blob: &blob,
            little_endian: false,
        };
        assert_eq!(le.u16(0, "field").unwrap(), 0x3412);
        assert_eq!(be.u16(0, "field").unwrap(), 0x1234);
        assert_eq!(le.u32(0, "field").unwrap(), 0x7856_3412);
        assert_eq!(be.u32(0, "field").unwrap(), 0x1234_5678);
        assert!(be.u32(1, "field").is_err());
    }
}
