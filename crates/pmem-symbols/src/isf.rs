//! The Volatility 3 Intermediate Symbol Format (ISF), schema 6.x
//! (`volatility3/schemas/schema-6.2.0.json`), built from BTF and kallsyms
//! with the naming conventions of dwarf2json, so vol3's Linux plugins find
//! the names they look for.

use crate::btf::{Btf, BtfType, Composite, TypeId};
use crate::globals::{GlobalType, KNOWN_GLOBALS};
use crate::kallsyms::{unshifted_address, KernelSymbol};
use base64::Engine;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

/// The ISF format version written: 6.2.0, which Volatility 3 2.x reads
/// (its newest schema, 6.3.0, only adds required producer fields, which
/// are written too).
pub const ISF_FORMAT: &str = "6.2.0";

/// Deepest chain of typedefs, qualifiers, pointers and arrays followed
/// before the BTF is taken to be cyclic (real kernels need < 20).
const MAX_TYPE_DEPTH: usize = 64;

/// A whole ISF document.
#[derive(Debug, Serialize)]
pub struct Isf {
    /// Format version, producer, and the inputs.
    pub metadata: Metadata,
    /// Integer, char, bool, float types, plus `void` and `pointer`.
    pub base_types: BTreeMap<String, BaseType>,
    /// Structs and unions.
    pub user_types: BTreeMap<String, UserType>,
    /// Enumerations.
    pub enums: BTreeMap<String, EnumDef>,
    /// Kernel symbols with link-time addresses.
    pub symbols: BTreeMap<String, Symbol>,
}

/// ISF metadata.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// [`ISF_FORMAT`].
    pub format: &'static str,
    /// Who wrote the ISF.
    pub producer: Producer,
    /// The Linux inputs.
    pub linux: LinuxSources,
}

/// The program that wrote the ISF.
#[derive(Debug, Serialize)]
pub struct Producer {
    /// `pmem`.
    pub name: &'static str,
    /// pmem's version.
    pub version: &'static str,
}

/// The inputs an ISF was built from, as the schema can name them.
#[derive(Debug, Serialize)]
pub struct LinuxSources {
    /// The symbol source: kallsyms, recorded as kind `system-map` (the
    /// schema's kinds are `dwarf`, `symtab` and `system-map`; kallsyms is
    /// System.map's format). The schema has no kind for BTF, so the type
    /// source is not listed.
    pub symbols: Vec<SourceFile>,
}

/// One input file and its hash.
#[derive(Debug, Serialize)]
pub struct SourceFile {
    /// Schema kind.
    pub kind: &'static str,
    /// File name.
    pub name: String,
    /// `sha256`.
    pub hash_type: &'static str,
    /// Hex SHA-256 of the file.
    pub hash_value: String,
}

/// A base type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseType {
    /// Size in bytes.
    pub size: u32,
    /// Signedness.
    pub signed: bool,
    /// `void`, `int`, `float`, `char` or `bool`.
    pub kind: &'static str,
    /// `little` or `big`.
    pub endian: &'static str,
}

/// A struct or union.
#[derive(Debug, Clone, Serialize)]
pub struct UserType {
    /// `struct` or `union`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u32,
    /// Members by name.
    pub fields: BTreeMap<String, Field>,
}

/// One struct or union member.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// Member type.
    #[serde(rename = "type")]
    pub type_ref: TypeRef,
    /// Byte offset (of the byte holding the first bit, for a bitfield).
    pub offset: u32,
    /// An unnamed struct or union member whose fields vol3 lifts into the
    /// parent (C11 anonymous members).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

/// A type descriptor: how a member, pointer target or symbol refers to a
/// type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TypeRef {
    /// A base type by name.
    Base {
        /// Key in `base_types`.
        name: String,
    },
    /// A pointer.
    Pointer {
        /// Pointee.
        subtype: Box<TypeRef>,
    },
    /// A fixed-size array.
    Array {
        /// Number of elements.
        count: u32,
        /// Element type.
        subtype: Box<TypeRef>,
    },
    /// A struct by name.
    Struct {
        /// Key in `user_types`.
        name: String,
    },
    /// A union by name.
    Union {
        /// Key in `user_types`.
        name: String,
    },
    /// An enum by name.
    Enum {
        /// Key in `enums`.
        name: String,
    },
    /// A function (the target of a function pointer).
    Function,
    /// A bitfield of an integer or enum.
    Bitfield {
        /// First bit, counted from the least significant bit of the byte
        /// at the field's offset.
        bit_position: u32,
        /// Width in bits.
        bit_length: u32,
        /// The integer or enum type read at the offset.
        #[serde(rename = "type")]
        storage: Box<TypeRef>,
    },
}

impl TypeRef {
    fn base(name: &str) -> TypeRef {
        TypeRef::Base {
            name: name.to_string(),
        }
    }

    fn void() -> TypeRef {
        TypeRef::base("void")
    }
}

/// An enum.
#[derive(Debug, Clone, Serialize)]
pub struct EnumDef {
    /// Size in bytes.
    pub size: u32,
    /// The base type with that size and signedness.
    pub base: String,
    /// Constants by name.
    pub constants: BTreeMap<String, EnumValue>,
}

/// An enumerator's value: written as a JSON integer, signed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnumValue(pub i128);

impl Serialize for EnumValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.0) {
            Ok(signed) => serializer.serialize_i64(signed),
            // BTF values fit in 64 bits: the rest are large unsigned.
            Err(_) => serializer.serialize_u64(self.0 as u64),
        }
    }
}

/// A symbol.
#[derive(Debug, Clone, Serialize)]
pub struct Symbol {
    /// Link-time (un-shifted) address.
    pub address: u64,
    /// Its type, when known.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_ref: Option<TypeRef>,
    /// Base64 of the bytes at the symbol (for `linux_banner`: the banner
    /// string with its NUL, which vol3 scans memory for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constant_data: Option<String>,
}

/// What [`build`] needs.
pub struct Inputs<'a> {
    /// The kernel's BTF.
    pub btf: &'a Btf,
    /// The kernel's kallsyms (vmlinux and module symbols; module symbols
    /// are left out: they live at module load addresses, not in vmlinux).
    pub kallsyms: &'a [KernelSymbol],
    /// Name and SHA-256 (hex) of the kallsyms file, for the metadata.
    pub kallsyms_source: (String, String),
    /// `/proc/version`: the kernel's `linux_banner`.
    pub banner: Option<&'a [u8]>,
    /// The KASLR offset to subtract from kallsyms addresses.
    pub kaslr_offset: u64,
}

/// Why an ISF could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsfError {
    /// A chain of type references longer than any real kernel has.
    #[error("BTF type {0}: chain of type references deeper than {MAX_TYPE_DEPTH} (a cycle?)")]
    TypeCycle(TypeId),
    /// The banner file does not hold a Linux banner.
    #[error(
        "the banner does not start with \"Linux version \" (give /proc/version of the same boot)"
    )]
    NotABanner,
    /// A banner was given but kallsyms has no `linux_banner` to put it on.
    #[error(
        "kallsyms has no linux_banner symbol to attach the banner to (a kernel built without \
         CONFIG_KALLSYMS_ALL lists functions only)"
    )]
    NoBannerSymbol,
}

/// Builds the ISF.
pub fn build(inputs: &Inputs) -> Result<Isf, IsfError> {
    let mut converter = Converter::new(inputs.btf);
    let base_types = converter.base_types();
    let enum_bases = EnumBases::new(&base_types);
    let mut user_types = BTreeMap::new();
    let mut enums = BTreeMap::new();
    for id in 0..inputs.btf.types.len() as TypeId {
        match &inputs.btf.types[id as usize] {
            BtfType::Struct(composite) | BtfType::Union(composite) => {
                let name = converter.user_type_name(id, 0)?;
                // Two definitions under one tag (rare after BTF dedup):
                // the first stays.
                if let Entry::Vacant(slot) = user_types.entry(name) {
                    slot.insert(converter.user_type(id, composite)?);
                }
            }
            BtfType::Typedef { name, target } => {
                // dwarf2json's rule: `typedef struct { ... } name_t;` is a
                // user type named after the typedef (references to the
                // typedef resolve to it, see `resolve`).
                if let Some(BtfType::Struct(composite) | BtfType::Union(composite)) =
                    inputs.btf.get(*target)
                {
                    let typedef_name = inputs.btf.name(*name);
                    if inputs.btf.name(composite.name).is_empty() && !typedef_name.is_empty() {
                        if let Entry::Vacant(slot) = user_types.entry(typedef_name.to_string()) {
                            slot.insert(converter.user_type(*target, composite)?);
                        }
                    }
                }
            }
            BtfType::Enum {
                size,
                signed,
                values,
                ..
            } => {
                let name = converter.user_type_name(id, 0)?;
                if let Entry::Vacant(slot) = enums.entry(name) {
                    let negative = values.iter().any(|v| v.value < 0);
                    slot.insert(EnumDef {
                        size: *size,
                        base: enum_bases.pick(*size, *signed || negative),
                        constants: values
                            .iter()
                            .map(|v| (inputs.btf.name(v.name).to_string(), EnumValue(v.value)))
                            .collect(),
                    });
                }
            }
            _ => {}
        }
    }
    let symbols = converter.symbols(inputs, &user_types, &base_types)?;
    Ok(Isf {
        metadata: Metadata {
            format: ISF_FORMAT,
            producer: Producer {
                name: "pmem",
                version: env!("CARGO_PKG_VERSION"),
            },
            linux: LinuxSources {
                symbols: vec![SourceFile {
                    kind: "system-map",
                    name: inputs.kallsyms_source.0.clone(),
                    hash_type: "sha256",
                    hash_value: inputs.kallsyms_source.1.clone(),
                }],
            },
        },
        base_types,
        user_types,
        enums,
        symbols,
    })
}

/// Picks an enum's `base`: the base type of its size and signedness, by
/// the names GCC gives them (which vol3 and dwarf2json use too).
struct EnumBases {
    /// (size, signed) -> base type name.
    by_shape: HashMap<(u32, bool), String>,
}

impl EnumBases {
    fn new(base_types: &BTreeMap<String, BaseType>) -> EnumBases {
        let preferred = [
            "int",
            "unsigned int",
            "long int",
            "long unsigned int",
            "short int",
            "short unsigned int",
            "signed char",
            "unsigned char",
            "long long int",
            "long long unsigned int",
            "char",
            // clang's spellings of the same.
            "long",
            "unsigned long",
            "short",
            "unsigned short",
            "long long",
            "unsigned long long",
        ];
        let mut by_shape = HashMap::new();
        let candidates = preferred
            .iter()
            .filter_map(|name| base_types.get_key_value(*name))
            .chain(base_types.iter());
        for (name, base) in candidates {
            if matches!(base.kind, "int" | "char") && !name.starts_with("__") {
                by_shape
                    .entry((base.size, base.signed))
                    .or_insert_with(|| name.clone());
            }
        }
        EnumBases { by_shape }
    }

    fn pick(&self, size: u32, signed: bool) -> String {
        self.by_shape
            .get(&(size, signed))
            .or_else(|| self.by_shape.get(&(size, !signed)))
            .cloned()
            // dwarf2json's fallback when no integer of that size exists.
            .unwrap_or_else(|| "void".to_string())
    }
}

struct Converter<'a> {
    btf: &'a Btf,
    endian: &'static str,
    /// Memo of struct/union/enum names, anonymous ones hashed.
    names: HashMap<TypeId, String>,
}

impl<'a> Converter<'a> {
    fn new(btf: &'a Btf) -> Converter<'a> {
        Converter {
            btf,
            endian: if btf.little_endian { "little" } else { "big" },
            names: HashMap::new(),
        }
    }

    fn base_types(&self) -> BTreeMap<String, BaseType> {
        let mut base_types = BTreeMap::new();
        base_types.insert(
            "void".to_string(),
            BaseType {
                size: 0,
                signed: false,
                kind: "void",
                endian: self.endian,
            },
        );
        for parsed in &self.btf.types {
            let (name, base) = match parsed {
                BtfType::Int {
                    name,
                    size,
                    encoding,
                    ..
                } => {
                    let text = self.btf.name(*name);
                    let kind = if encoding.bool {
                        "bool"
                    } else if encoding.char || text.contains("char") {
                        "char"
                    } else {
                        "int"
                    };
                    let base = BaseType {
                        size: *size,
                        signed: encoding.signed,
                        kind,
                        endian: self.endian,
                    };
                    (text, base)
                }
                BtfType::Float { name, size } => (
                    self.btf.name(*name),
                    BaseType {
                        size: *size,
                        signed: true,
                        kind: "float",
                        endian: self.endian,
                    },
                ),
                _ => continue,
            };
            if !name.is_empty() && !base_types.contains_key(name) {
                base_types.insert(name.to_string(), base);
            }
        }
        // BTF has no pointer size: it is the size of `long` on every
        // architecture Linux runs on (LP64 or ILP32).
        let pointer_size = ["long unsigned int", "long int", "unsigned long", "long"]
            .iter()
            .find_map(|name| base_types.get(*name))
            .map_or(8, |long| long.size);
        base_types.insert(
            "pointer".to_string(),
            BaseType {
                size: pointer_size,
                signed: false,
                kind: "int",
                endian: self.endian,
            },
        );
        base_types
    }

    /// The user-type (or enum) name of a struct, union or enum: its tag, or
    /// for an anonymous one `unnamed_` and 16 hex digits of a hash of its
    /// definition (dwarf2json's scheme: the same definition gives the same
    /// name in every build of the kernel).
    fn user_type_name(&mut self, id: TypeId, depth: usize) -> Result<String, IsfError> {
        if let Some(name) = self.names.get(&id) {
            return Ok(name.clone());
        }
        if depth > MAX_TYPE_DEPTH {
            return Err(IsfError::TypeCycle(id));
        }
        let btf = self.btf;
        let name = match &btf.types[id as usize] {
            BtfType::Struct(c) | BtfType::Union(c) if !btf.name(c.name).is_empty() => {
                btf.name(c.name).to_string()
            }
            BtfType::Enum { name, .. } if !btf.name(*name).is_empty() => {
                btf.name(*name).to_string()
            }
            BtfType::Struct(c) | BtfType::Union(c) => {
                let mut definition = format!(
                    "{} {} {{",
                    if matches!(btf.types[id as usize], BtfType::Struct(_)) {
                        "struct"
                    } else {
                        "union"
                    },
                    c.size
                );
                for member in &c.members {
                    let member_type = self.resolve(member.type_id, depth + 1)?;
                    definition.push_str(&format!(
                        "{}@{}:{:?}={};",
                        btf.name(member.name),
                        member.bit_offset,
                        member.bitfield_bits,
                        serde_json::to_string(&member_type).unwrap_or_default()
                    ));
                }
                definition.push('}');
                unnamed(&definition)
            }
            BtfType::Enum { size, values, .. } => {
                let mut definition = format!("enum {size} {{");
                for value in values {
                    definition.push_str(&format!("{}={};", btf.name(value.name), value.value));
                }
                definition.push('}');
                unnamed(&definition)
            }
            _ => unreachable!("user_type_name is called for structs, unions and enums"),
        };
        self.names.insert(id, name.clone());
        Ok(name)
    }

    /// The descriptor of a type as members, pointers and symbols use it.
    fn resolve(&mut self, id: TypeId, depth: usize) -> Result<TypeRef, IsfError> {
        if depth > MAX_TYPE_DEPTH {
            return Err(IsfError::TypeCycle(id));
        }
        let btf = self.btf;
        Ok(match &btf.types[id as usize] {
            BtfType::Void => TypeRef::void(),
            BtfType::Int { name, .. } | BtfType::Float { name, .. } => {
                TypeRef::base(btf.name(*name))
            }
            BtfType::Ptr { target } => TypeRef::Pointer {
                subtype: Box::new(self.resolve(*target, depth + 1)?),
            },
            BtfType::Array { element, count, .. } => TypeRef::Array {
                count: *count,
                subtype: Box::new(self.resolve(*element, depth + 1)?),
            },
            BtfType::Struct(_) => TypeRef::Struct {
                name: self.user_type_name(id, depth + 1)?,
            },
            BtfType::Union(_) => TypeRef::Union {
                name: self.user_type_name(id, depth + 1)?,
            },
            BtfType::Enum { .. } => TypeRef::Enum {
                name: self.user_type_name(id, depth + 1)?,
            },
            // A declared-only type: referenced by tag, like dwarf2json does
            // for an incomplete struct (BTF dedup leaves a FWD only where
            // no definition exists).
            BtfType::Fwd { name, is_union } => {
                let name = btf.name(*name).to_string();
                if *is_union {
                    TypeRef::Union { name }
                } else {
                    TypeRef::Struct { name }
                }
            }
            BtfType::Typedef { name, target } => match btf.get(*target) {
                Some(BtfType::Struct(c)) if btf.name(c.name).is_empty() => TypeRef::Struct {
                    name: btf.name(*name).to_string(),
                },
                Some(BtfType::Union(c)) if btf.name(c.name).is_empty() => TypeRef::Union {
                    name: btf.name(*name).to_string(),
                },
                _ => self.resolve(*target, depth + 1)?,
            },
            BtfType::Volatile { target }
            | BtfType::Const { target }
            | BtfType::Restrict { target }
            | BtfType::TypeTag { target, .. } => self.resolve(*target, depth + 1)?,
            BtfType::Func { .. } | BtfType::FuncProto { .. } => TypeRef::Function,
            BtfType::Var { type_id, .. } => self.resolve(*type_id, depth + 1)?,
            // Not types of data: nothing refers to them as such.
            BtfType::Datasec { .. } | BtfType::DeclTag { .. } => TypeRef::void(),
        })
    }

    /// Strips typedefs and qualifiers: the type a bitfield is stored in.
    fn storage_type(&self, mut id: TypeId) -> Result<TypeId, IsfError> {
        for _ in 0..MAX_TYPE_DEPTH {
            match &self.btf.types[id as usize] {
                BtfType::Typedef { target, .. }
                | BtfType::Volatile { target }
                | BtfType::Const { target }
                | BtfType::Restrict { target }
                | BtfType::TypeTag { target, .. } => id = *target,
                _ => return Ok(id),
            }
        }
        Err(IsfError::TypeCycle(id))
    }

    fn user_type(&mut self, id: TypeId, composite: &Composite) -> Result<UserType, IsfError> {
        let btf = self.btf;
        let kind = match btf.types[id as usize] {
            BtfType::Union(_) => "union",
            _ => "struct",
        };
        let mut fields = BTreeMap::new();
        let mut unnamed_count = 0;
        for member in &composite.members {
            let storage_id = self.storage_type(member.type_id)?;
            let storage = &btf.types[storage_id as usize];
            // A bitfield: the width in the member (kind_flag form), or in
            // an INT narrower than its storage (the older form).
            let mut bit_offset = member.bit_offset;
            let bitfield_bits = match (member.bitfield_bits, storage) {
                (Some(bits), _) => Some(bits),
                (
                    None,
                    BtfType::Int {
                        size,
                        bit_offset: int_offset,
                        bits,
                        ..
                    },
                ) if *int_offset != 0 || u64::from(*bits) != u64::from(*size) * 8 => {
                    bit_offset = bit_offset.saturating_add(u32::from(*int_offset));
                    Some(u32::from(*bits))
                }
                _ => None,
            };
            let member_type = self.resolve(member.type_id, 0)?;
            let (type_ref, offset) = match bitfield_bits {
                Some(bits)
                    if matches!(member_type, TypeRef::Base { .. } | TypeRef::Enum { .. }) =>
                {
                    (
                        TypeRef::Bitfield {
                            bit_position: bit_offset % 8,
                            bit_length: bits,
                            storage: Box::new(member_type),
                        },
                        bit_offset / 8,
                    )
                }
                _ => (member_type, bit_offset / 8),
            };
            let mut name = btf.name(member.name).to_string();
            // vol3 lifts the fields of an anonymous struct or union member
            // into the parent (it looks the member's type up by name).
            let anonymous = name.is_empty()
                && matches!(type_ref, TypeRef::Struct { .. } | TypeRef::Union { .. });
            if name.is_empty() {
                name = format!("unnamed_field_{unnamed_count:x}");
                unnamed_count += 1;
            }
            fields.insert(
                name,
                Field {
                    type_ref,
                    offset,
                    anonymous,
                },
            );
        }
        Ok(UserType {
            kind,
            size: composite.size,
            fields,
        })
    }

    fn symbols(
        &mut self,
        inputs: &Inputs,
        user_types: &BTreeMap<String, UserType>,
        base_types: &BTreeMap<String, BaseType>,
    ) -> Result<BTreeMap<String, Symbol>, IsfError> {
        let mut symbols: BTreeMap<String, Symbol> = BTreeMap::new();
        let mut kinds: HashMap<&str, char> = HashMap::new();
        for symbol in inputs.kallsyms.iter().filter(|s| s.module.is_none()) {
            let is_data = |kind: char| "dDbBrR".contains(kind);
            if let Some(&earlier) = kinds.get(symbol.name.as_str()) {
                // Static symbols can share a name: keep the first, unless a
                // data symbol follows a text one (the plugins read data).
                if is_data(earlier) || !is_data(symbol.kind) {
                    continue;
                }
            }
            kinds.insert(&symbol.name, symbol.kind);
            symbols.insert(
                symbol.name.clone(),
                Symbol {
                    address: unshifted_address(symbol.address, inputs.kaslr_offset),
                    // dwarf2json gives symbol-table-only symbols `void`;
                    // vol3 needs a type to build an object at a symbol.
                    type_ref: Some(TypeRef::void()),
                    constant_data: None,
                },
            );
        }
        // Known globals: their declared type, where this kernel has it.
        for (name, declared) in KNOWN_GLOBALS {
            let Some(symbol) = symbols.get_mut(*name) else {
                continue;
            };
            let struct_ref = |type_name: &str| {
                user_types.get(type_name).map(|user_type| {
                    let name = type_name.to_string();
                    if user_type.kind == "union" {
                        TypeRef::Union { name }
                    } else {
                        TypeRef::Struct { name }
                    }
                })
            };
            let base_ref = |type_name: &str| {
                base_types
                    .contains_key(type_name)
                    .then(|| TypeRef::base(type_name))
            };
            let type_ref = match declared {
                GlobalType::Struct(type_name) => struct_ref(type_name),
                GlobalType::StructPointer(type_name) => {
                    struct_ref(type_name).map(|subtype| TypeRef::Pointer {
                        subtype: Box::new(subtype),
                    })
                }
                GlobalType::StructArray(type_name, count) => {
                    struct_ref(type_name).map(|subtype| TypeRef::Array {
                        count: *count,
                        subtype: Box::new(subtype),
                    })
                }
                GlobalType::Base(type_name) => base_ref(type_name),
                GlobalType::BasePointer(type_name) => {
                    base_ref(type_name).map(|subtype| TypeRef::Pointer {
                        subtype: Box::new(subtype),
                    })
                }
                GlobalType::StructPointerPointer(type_name) => {
                    struct_ref(type_name).map(|subtype| TypeRef::Pointer {
                        subtype: Box::new(TypeRef::Pointer {
                            subtype: Box::new(subtype),
                        }),
                    })
                }
                GlobalType::FunctionPointerArray => Some(TypeRef::Array {
                    count: 0,
                    subtype: Box::new(TypeRef::Pointer {
                        subtype: Box::new(TypeRef::Function),
                    }),
                }),
                GlobalType::AnonymousStruct(members) => {
                    anonymous_struct(user_types, members).map(|name| TypeRef::Struct { name })
                }
                GlobalType::TaintFlags => user_types.get("taint_flag").and_then(|element| {
                    let gap = next_symbol_gap(inputs.kallsyms, symbol.address, inputs.kaslr_offset);
                    let release = inputs.banner.and_then(banner_release);
                    taint_flags_count(release.as_deref(), gap, element.size).map(|count| {
                        TypeRef::Array {
                            count,
                            subtype: Box::new(TypeRef::Struct {
                                name: "taint_flag".to_string(),
                            }),
                        }
                    })
                }),
            };
            if type_ref.is_some() {
                symbol.type_ref = type_ref;
            }
        }
        // BTF VARs (the per-CPU variables) carry their own type.
        let btf = self.btf;
        for parsed in &btf.types {
            if let BtfType::Var { name, type_id, .. } = parsed {
                if symbols.contains_key(btf.name(*name)) {
                    let type_ref = self.resolve(*type_id, 0)?;
                    if let Some(symbol) = symbols.get_mut(btf.name(*name)) {
                        symbol.type_ref = Some(type_ref);
                    }
                }
            }
        }
        if let Some(banner) = inputs.banner {
            let symbol = symbols
                .get_mut("linux_banner")
                .ok_or(IsfError::NoBannerSymbol)?;
            let data = banner_data(banner)?;
            symbol.type_ref = Some(TypeRef::Array {
                count: data.len() as u32,
                subtype: Box::new(TypeRef::base(if base_types.contains_key("char") {
                    "char"
                } else {
                    "void"
                })),
            });
            symbol.constant_data = Some(base64::engine::general_purpose::STANDARD.encode(&data));
        }
        Ok(symbols)
    }
}

/// The bytes of `linux_banner` in memory, from `/proc/version`: the same
/// text (`Linux version RELEASE (BUILDER) (COMPILER) VERSION\n`) and the
/// string's NUL, which vol3 scans for.
pub fn banner_data(banner: &[u8]) -> Result<Vec<u8>, IsfError> {
    let text = match banner.iter().rposition(|&b| b != 0) {
        Some(last) => &banner[..=last],
        None => &[][..],
    };
    if !text.starts_with(b"Linux version ") {
        return Err(IsfError::NotABanner);
    }
    let mut data = text.to_vec();
    data.push(0);
    Ok(data)
}

/// The kernel release in a banner (`Linux version 6.1.0-28-amd64 ...`).
pub fn banner_release(banner: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(banner.strip_prefix(b"Linux version ")?).ok()?;
    let release = text.split_whitespace().next()?;
    Some(release.to_string())
}

/// The anonymous struct whose members have exactly these names (a global
/// declared `static struct { ... } sym;` has no tag to find it by).
fn anonymous_struct(user_types: &BTreeMap<String, UserType>, members: &[&str]) -> Option<String> {
    user_types
        .iter()
        .find(|(name, user_type)| {
            name.starts_with("unnamed_")
                && user_type.kind == "struct"
                && user_type.fields.len() == members.len()
                && members.iter().all(|m| user_type.fields.contains_key(*m))
        })
        .map(|(name, _)| name.clone())
}

/// Bytes from the symbol at `address` (link-time) to the next vmlinux
/// symbol above it: an upper bound of the object's size (alignment
/// padding may follow it).
fn next_symbol_gap(kallsyms: &[KernelSymbol], address: u64, kaslr_offset: u64) -> Option<u64> {
    kallsyms
        .iter()
        .filter(|s| s.module.is_none())
        .map(|s| unshifted_address(s.address, kaslr_offset))
        .filter(|&a| a > address)
        .min()
        .map(|next| next - address)
}

/// Elements of `taint_flags[TAINT_FLAGS_COUNT]`. The count is a
/// `#define` (include/linux/panic.h), so it comes from the release: 19
/// since TAINT_TEST (6.0), 20 since TAINT_FWCTL (6.15); before 6.0 at
/// most 18. The gap to the next symbol bounds it (it alone would not do:
/// padding follows the array, 64 bytes for 6.1's 19 3-byte flags). vol3
/// prints a letter for every element, so an element too many shows up as
/// a wrong taint letter in every module listing.
fn taint_flags_count(release: Option<&str>, gap: Option<u64>, element_size: u32) -> Option<u32> {
    let by_gap = match (gap, element_size) {
        (Some(gap), size) if size > 0 => Some(u32::try_from(gap / u64::from(size)).ok()?),
        _ => None,
    };
    let version = release.and_then(|release| {
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().ok());
        Some((numbers.next()??, numbers.next()??))
    });
    let by_release = match version {
        Some(v) if v >= (6, 15) => Some(20),
        Some(v) if v >= (6, 0) => Some(19),
        Some(_) => Some(18),
        None => None,
    };
    match (by_release, by_gap) {
        (Some(r), Some(g)) => Some(r.min(g)),
        (r, g) => r.or(g),
    }
}

fn unnamed(definition: &str) -> String {
    let digest = Sha256::digest(definition.as_bytes());
    let mut name = String::from("unnamed_");
    for byte in &digest[..8] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_symbol(address: u64, name: &str, module: Option<&str>) -> KernelSymbol {
        KernelSymbol {
            address,
            kind: 'D',
            name: name.to_string(),
            module: module.map(str::to_string),
        }
    }

    #[test]
    fn taint_flags_count_follows_the_release_not_the_padding() {
        // 6.1: 19 flags of 3 bytes, the next symbol 64 bytes on (21 by the gap).
        assert_eq!(
            taint_flags_count(Some("6.1.0-56-cloud-amd64"), Some(64), 3),
            Some(19)
        );
        // 6.12: 19 flags of 16 bytes, 320 bytes to the next symbol (20 by the gap).
        assert_eq!(
            taint_flags_count(Some("6.12.118+deb12-cloud-amd64"), Some(320), 16),
            Some(19)
        );
        assert_eq!(taint_flags_count(Some("6.15.2"), Some(4096), 16), Some(20));
        assert_eq!(
            taint_flags_count(Some("5.10.0-30-amd64"), Some(4096), 3),
            Some(18)
        );
        // The gap still bounds it, and without a banner it is all there is.
        assert_eq!(taint_flags_count(Some("6.1.0"), Some(30), 3), Some(10));
        assert_eq!(taint_flags_count(None, Some(57), 3), Some(19));
        assert_eq!(taint_flags_count(None, None, 3), None);
    }

    #[test]
    fn next_symbol_gap_skips_modules_and_lower_symbols() {
        let kallsyms = [
            kernel_symbol(0xffff_ffff_8200_0040, "after", None),
            kernel_symbol(0xffff_ffff_8200_0000, "taint_flags", None),
            kernel_symbol(0xffff_ffff_8200_0010, "in_module", Some("m")),
            kernel_symbol(0xffff_ffff_8100_0000, "_text", None),
        ];
        assert_eq!(
            next_symbol_gap(&kallsyms, 0xffff_ffff_8200_0000, 0),
            Some(0x40)
        );
        assert_eq!(next_symbol_gap(&kallsyms, 0xffff_ffff_8200_0040, 0), None);
    }

    #[test]
    fn anonymous_struct_is_found_by_its_member_names() {
        let field = Field {
            type_ref: TypeRef::void(),
            offset: 0,
            anonymous: false,
        };
        let user_type = |kind, names: &[&str]| UserType {
            kind,
            size: 8,
            fields: names
                .iter()
                .map(|n| (n.to_string(), field.clone()))
                .collect(),
        };
        let mut user_types = BTreeMap::new();
        user_types.insert(
            "tk_core_like".into(),
            user_type("struct", &["seq", "timekeeper"]),
        );
        user_types.insert(
            "unnamed_01".into(),
            user_type("union", &["seq", "timekeeper"]),
        );
        user_types.insert(
            "unnamed_02".into(),
            user_type("struct", &["seq", "timekeeper", "x"]),
        );
        user_types.insert(
            "unnamed_03".into(),
            user_type("struct", &["seq", "timekeeper"]),
        );
        assert_eq!(
            anonymous_struct(&user_types, &["seq", "timekeeper"]).as_deref(),
            Some("unnamed_03")
        );
        assert_eq!(anonymous_struct(&user_types, &["seq"]), None);
    }
}
