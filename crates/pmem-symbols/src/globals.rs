//! Types for global variables that Volatility 3's Linux plugins dereference.
//!
//! vmlinux BTF describes the per-CPU variables only (its VAR entries);
//! the ordinary globals a plugin reads with `object_from_symbol` have no
//! type there. dwarf2json takes them from DWARF; here they come from this
//! table, each line naming the type the kernel declares and who needs it.
//! A type the kernel's BTF lacks (e.g. `printk_ringbuffer` before 5.10) is
//! left out, and the symbol keeps the `void` type dwarf2json gives
//! symbol-table-only symbols.

/// How a known global is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalType {
    /// `struct NAME sym;`
    Struct(&'static str),
    /// `struct NAME *sym;`
    StructPointer(&'static str),
    /// `struct NAME sym[COUNT];`
    StructArray(&'static str, u32),
    /// A base (integer) type: `unsigned int sym;`
    Base(&'static str),
    /// `BASE *sym;`
    BasePointer(&'static str),
    /// `struct NAME **sym;`
    StructPointerPointer(&'static str),
    /// `fn_ptr_t sym[];`, declared without a size (dwarf2json writes
    /// such arrays with count 0; vol3 sizes the syscall tables itself).
    FunctionPointerArray,
    /// `static struct { MEMBERS } sym;`: an anonymous struct, found in the
    /// BTF by its member names (the only way to name it: it has no tag).
    AnonymousStruct(&'static [&'static str]),
    /// `const struct taint_flag taint_flags[TAINT_FLAGS_COUNT];`: the
    /// count is a `#define`, in neither BTF nor kallsyms, and vol3 prints
    /// every element it is given (see `isf::taint_flags_count`).
    TaintFlags,
}

/// Global symbol name -> declared type, for the globals vol3's Linux
/// plugins and its KASLR search read through their type.
pub const KNOWN_GLOBALS: &[(&str, GlobalType)] = &[
    // linux.pslist, pstree, psaux, lsof, envars, malfind, mountinfo walk
    // the task list from it; the KASLR search reads its pid, comm, tasks.
    ("init_task", GlobalType::Struct("task_struct")),
    // The KASLR search compares init_task.active_mm with &init_mm ...
    ("init_mm", GlobalType::Struct("mm_struct")),
    // ... and takes the virtual shift from init_task.files - &init_files.
    ("init_files", GlobalType::Struct("files_struct")),
    // linux.lsmod, linux.check_modules: the module list head.
    ("modules", GlobalType::Struct("list_head")),
    // linux.check_modules: the sysfs view of modules.
    ("module_kset", GlobalType::StructPointer("kset")),
    // linux.hidden_modules: the module address range.
    ("mod_tree", GlobalType::Struct("mod_tree_root")),
    // linux.sockstat: every network namespace.
    ("net_namespace_list", GlobalType::Struct("list_head")),
    // linux.sockstat, linux.lsof: recognise socket files.
    ("socket_file_ops", GlobalType::Struct("file_operations")),
    (
        "sockfs_dentry_operations",
        GlobalType::Struct("dentry_operations"),
    ),
    // linux.kmsg, kernels 5.10+: the printk ring buffer.
    ("prb", GlobalType::StructPointer("printk_ringbuffer")),
    // linux.kmsg, kernels before 5.10: the flat log buffer (u32 indices).
    ("log_buf", GlobalType::BasePointer("char")),
    ("log_buf_len", GlobalType::Base("unsigned int")),
    ("log_first_idx", GlobalType::Base("unsigned int")),
    ("log_next_idx", GlobalType::Base("unsigned int")),
    // linux.check_idt: gate_desc idt_table[IDT_ENTRIES] (x86).
    ("idt_table", GlobalType::StructArray("gate_struct", 256)),
    // linux.pidhashtable: the initial pid namespace.
    ("init_pid_ns", GlobalType::Struct("pid_namespace")),
    // linux.iomem: the root of the physical resource tree.
    ("iomem_resource", GlobalType::Struct("resource")),
    // linux.sockscan and socket walkers: the TCP socket hash.
    ("tcp_hashinfo", GlobalType::Struct("inet_hashinfo")),
    // linux.capabilities: the highest capability of this kernel.
    ("cap_last_cap", GlobalType::Base("int")),
    // linux.keyboard_notifiers.
    (
        "keyboard_notifier_list",
        GlobalType::Struct("atomic_notifier_head"),
    ),
    // linux.tty_check.
    ("tty_drivers", GlobalType::Struct("list_head")),
    // linux.ebpf: the BPF program id table.
    ("prog_idr", GlobalType::Struct("idr")),
    // Page-to-address helpers (linux.pagecache, malfind): x86-64 with
    // KASLR of memory regions keeps the struct page array base here.
    ("vmemmap_base", GlobalType::Base("long unsigned int")),
    ("mem_map", GlobalType::StructPointer("page")),
    // SPARSEMEM_EXTREME: the section root table (pfn <-> page).
    (
        "mem_section",
        GlobalType::StructPointerPointer("mem_section"),
    ),
    // x86-64 direct map base under KASLR of memory regions.
    ("page_offset_base", GlobalType::Base("long unsigned int")),
    // linux.lsmod, linux.check_modules (and every module listing): the
    // kernel's taint letters; a `void` symbol makes vol3 fail.
    ("taint_flags", GlobalType::TaintFlags),
    // linux.pslist/pstree/psaux creation times: boot time from the
    // timekeeper, inside an anonymous struct.
    (
        "tk_core",
        GlobalType::AnonymousStruct(&["seq", "timekeeper"]),
    ),
    // linux.check_syscall.
    ("sys_call_table", GlobalType::FunctionPointerArray),
    ("ia32_sys_call_table", GlobalType::FunctionPointerArray),
    ("x32_sys_call_table", GlobalType::FunctionPointerArray),
    // linux.check_afinfo: the network protocols' seq_file operations.
    ("tcp4_seq_afinfo", GlobalType::Struct("tcp_seq_afinfo")),
    ("tcp6_seq_afinfo", GlobalType::Struct("tcp_seq_afinfo")),
    ("udp4_seq_afinfo", GlobalType::Struct("udp_seq_afinfo")),
    ("udp6_seq_afinfo", GlobalType::Struct("udp_seq_afinfo")),
    ("udplite4_seq_afinfo", GlobalType::Struct("udp_seq_afinfo")),
    ("udplite6_seq_afinfo", GlobalType::Struct("udp_seq_afinfo")),
    ("tcp4_seq_ops", GlobalType::Struct("seq_operations")),
    ("tcp6_seq_ops", GlobalType::Struct("seq_operations")),
    ("udp_seq_ops", GlobalType::Struct("seq_operations")),
    ("udp6_seq_ops", GlobalType::Struct("seq_operations")),
    ("raw_seq_ops", GlobalType::Struct("seq_operations")),
    ("raw6_seq_ops", GlobalType::Struct("seq_operations")),
    ("unix_seq_ops", GlobalType::Struct("seq_operations")),
    ("packet_seq_ops", GlobalType::Struct("seq_operations")),
    ("arp_seq_ops", GlobalType::Struct("seq_operations")),
    // linux.tracing.ftrace: the registered ftrace callbacks.
    ("ftrace_ops_list", GlobalType::StructPointer("ftrace_ops")),
    ("ftrace_list_end", GlobalType::Struct("ftrace_ops")),
    (
        "ftrace_ops_trampoline_list",
        GlobalType::Struct("list_head"),
    ),
    ("ftrace_mod_maps", GlobalType::Struct("list_head")),
    // linux.ebpf, linux.modxview: BPF programs' symbols.
    ("bpf_kallsyms", GlobalType::Struct("list_head")),
    // linux.graphics.fbdev.
    ("num_registered_fb", GlobalType::Base("int")),
];
