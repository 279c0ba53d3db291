/* The source of tests/data/sample.btf: a few kernel-like types that cover
 * every BTF kind the converter handles. Regenerate (Debian: clang, dwarves,
 * binutils) with tests/data/make-sample.sh. */
#define __tag(x) __attribute__((btf_decl_tag(x)))
#define __user __attribute__((btf_type_tag("user")))

struct list_head {
	struct list_head *next, *prev;
};

enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_MAX };
enum signed_values { NEGATIVE = -2, POSITIVE = 3 };
enum wide_values { SMALL = 1, HUGE = 0xfedcba9876543210ULL };

struct opaque;

typedef struct {
	int counter;
} atomic_t;

typedef unsigned long long u64;

struct task_struct {
	volatile long state;
	unsigned int flags : 3;
	unsigned int in_execve : 1;
	enum pid_type kind : 2;
	signed int nice : 5;
	int pid;
	atomic_t usage;
	union {
		u64 wide;
		struct {
			unsigned short low;
			unsigned short high;
		};
	};
	struct list_head tasks;
	const char comm[16];
	struct task_struct *parent;
	struct opaque *hidden;
	void (*callback)(struct task_struct *, int);
	char __user *user_pointer;
	char *restrict scratch;
	_Bool exiting;
	double load;
	unsigned char tail[];
} __tag("sample");

struct task_struct init_task;

/* pahole encodes the variables of the per-CPU section as VAR and DATASEC,
 * as in vmlinux. */
__attribute__((section(".data..percpu"))) struct list_head runqueue_heads;

/* clang leaves out of DWARF the types nothing uses. */
struct enum_users {
	enum signed_values signed_value;
	enum wide_values wide_value;
	enum { ANON_A = 7, ANON_B } anonymous_value;
} enum_users;
int sample_function(struct task_struct *task, ...) { return task->pid; }

/* Globals vol3's plugins read that BTF gives no VAR for: typed by
 * globals.rs, found here by tag (taint_flags) or by members (tk_core). */
struct taint_flag {
	char c_true;
	char c_false;
	_Bool module;
};
const struct taint_flag taint_flags[19];

struct timekeeper {
	long long offs_real;
	long long offs_boot;
};
__attribute__((used)) static struct {
	unsigned int seq;
	struct timekeeper timekeeper;
} tk_core;
