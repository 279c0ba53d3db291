// SPDX-License-Identifier: GPL-2.0
/*
 * pmem_phys: a read-only view of this machine's physical RAM for pmem.
 *
 * /dev/pmem-phys is a character device whose file offset is the physical
 * address. Only whole pages inside "System RAM" resources are read; any
 * other offset (holes, MMIO, ACPI, reserved, partial pages) is never
 * touched and fails with ENXIO. RAM that cannot be read safely (offline,
 * hardware-poisoned, missing from the direct map) fails with EIO, so the
 * reader records it instead of receiving made-up bytes. There is no mmap
 * and no ioctl.
 *
 * Opening needs CAP_SYS_RAWIO and is refused under lockdown
 * "confidentiality" (like /proc/kcore) and on guests whose firmware hands
 * over unaccepted memory (TDX/SEV-SNP lazy acceptance), where touching a
 * page that was never accepted would harm the machine.
 *
 * Writing exists only in the write build (`pmem module build --write`,
 * PMEM_PHYS_WRITE), a research and teaching tool, and only when that build
 * is loaded with writable=1 (`pmem module load --write`). The write build
 * refuses to load under any lockdown mode, writes only whole System RAM
 * pages, taints the kernel and logs every write. The default build has no
 * write entry point at all.
 *
 * Part of pmem (https://github.com/... see the project's README); the
 * source travels inside the pmem binary: `pmem module build`.
 */
#include <linux/capability.h>
#include <linux/efi.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/ioport.h>
#include <linux/memory_hotplug.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/page-flags.h>
#include <linux/sched/signal.h>
#include <linux/security.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#define PMEM_PHYS_NAME "pmem-phys"
#define PMEM_PHYS_VERSION "1.1.0"

#ifdef PMEM_PHYS_WRITE
static bool writable;
module_param(writable, bool, 0444);
MODULE_PARM_DESC(writable, "Let root write whole System RAM pages through /dev/" PMEM_PHYS_NAME
		 " (taints the kernel; pmem module load --write)");
#endif

/* The first whole-page run of System RAM in [start, end], clipped to it. */
struct ram_run {
	u64 start;
	u64 end; /* inclusive */
	bool found;
};

static int first_ram(struct resource *res, void *arg)
{
	struct ram_run *run = arg;

	run->start = res->start;
	run->end = res->end;
	run->found = true;
	return 1; /* stop: the walk visits resources in ascending order */
}

/*
 * Number of whole System RAM pages starting at the page-aligned address
 * `addr`, looking no further than `limit` pages. 0: not RAM.
 */
static u64 ram_pages_at(u64 addr, u64 limit)
{
	struct ram_run run = { .found = false };
	u64 end = addr + limit * PAGE_SIZE - 1;

	walk_iomem_res_desc(IORES_DESC_NONE, IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY,
			    addr, end, &run, first_ram);
	if (!run.found || run.start > addr)
		return 0;
	return (run.end + 1 - addr) >> PAGE_SHIFT;
}

/* Copies one page of RAM into `bounce`; false when it must not be read. */
static bool read_page(unsigned long pfn, void *bounce)
{
	struct page *page = pfn_to_online_page(pfn);
	void *kaddr;
	long err;

	if (!page || PageOffline(page) || PageHWPoison(page))
		return false;
	/*
	 * Through a bounce page: copy_to_user() straight from slab or kernel
	 * text pages trips hardened usercopy. copy_from_kernel_nofault()
	 * survives pages missing from the direct map (secretmem, guarded).
	 */
	kaddr = kmap_local_page(page);
	err = copy_from_kernel_nofault(bounce, kaddr, PAGE_SIZE);
	kunmap_local(kaddr);
	return err == 0;
}

static ssize_t pmem_phys_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	u64 pos = *ppos;
	u64 run = 0; /* RAM pages known to follow `pos` */
	ssize_t done = 0;
	void *bounce;
	int err = 0;

	if (*ppos < 0)
		return -EINVAL;
	if (count == 0)
		return 0;
	bounce = (void *)__get_free_page(GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	while (count > 0) {
		u64 offset = pos & ~PAGE_MASK;
		size_t n = min_t(u64, count, PAGE_SIZE - offset);

		if (run == 0) {
			u64 pages = DIV_ROUND_UP(offset + count, PAGE_SIZE);

			run = ram_pages_at(pos - offset, pages);
			if (run == 0) {
				err = -ENXIO;
				break;
			}
		}
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		if (!read_page(pos >> PAGE_SHIFT, bounce)) {
			err = -EIO;
			break;
		}
		if (copy_to_user(buf + done, bounce + offset, n)) {
			err = -EFAULT;
			break;
		}
		done += n;
		pos += n;
		count -= n;
		run--;
		cond_resched();
	}
	free_page((unsigned long)bounce);
	*ppos = pos;
	return done ? done : err;
}

#ifdef PMEM_PHYS_WRITE
/* Copies `bounce` over one page of RAM; false when it must not be written. */
static bool write_page(unsigned long pfn, const void *bounce)
{
	struct page *page = pfn_to_online_page(pfn);
	void *kaddr, *alias;
	char probe;
	long err;

	if (!page || PageOffline(page) || PageHWPoison(page))
		return false;
	/* Pages missing from the direct map (secretmem, guarded) are not
	 * written, as they are not read. */
	kaddr = kmap_local_page(page);
	err = copy_from_kernel_nofault(&probe, kaddr, 1);
	kunmap_local(kaddr);
	if (err)
		return false;
	/* Through a mapping of our own: the direct map's alias of kernel text
	 * and rodata is read-only, and a write fault there would oops. */
	alias = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	if (!alias)
		return false;
	memcpy(alias, bounce, PAGE_SIZE);
	vunmap(alias);
	return true;
}

/*
 * Whole pages inside one System RAM resource only: the range is checked
 * before any byte is written (EINVAL for partial pages, EPERM outside
 * RAM), so a refused write changes nothing.
 */
static ssize_t pmem_phys_write(struct file *file, const char __user *buf, size_t count,
			       loff_t *ppos)
{
	u64 pos = *ppos;
	u64 pages = count >> PAGE_SHIFT;
	ssize_t done = 0;
	void *bounce;
	int err = 0;

	if (*ppos < 0 || (pos & ~PAGE_MASK) || (count & ~PAGE_MASK))
		return -EINVAL;
	if (count == 0)
		return 0;
	/* Lockdown may have been raised since the device was opened. */
	err = security_locked_down(LOCKDOWN_DEV_MEM);
	if (err)
		return err;
	if (ram_pages_at(pos, pages) < pages)
		return -EPERM;
	bounce = (void *)__get_free_page(GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	pr_notice(PMEM_PHYS_NAME ": %s[%d] writes %#llx-%#llx (%zu bytes)\n", current->comm,
		  task_pid_nr(current), pos, pos + count - 1, count);
	while (count > 0) {
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		if (copy_from_user(bounce, buf + done, PAGE_SIZE)) {
			err = -EFAULT;
			break;
		}
		if (!write_page(pos >> PAGE_SHIFT, bounce)) {
			pr_warn(PMEM_PHYS_NAME ": page %#llx could not be written\n", pos);
			err = -EIO;
			break;
		}
		done += PAGE_SIZE;
		pos += PAGE_SIZE;
		count -= PAGE_SIZE;
		cond_resched();
	}
	free_page((unsigned long)bounce);
	*ppos = pos;
	return done ? done : err;
}
#endif

static bool has_unaccepted_memory(void)
{
#if defined(CONFIG_UNACCEPTED_MEMORY) && defined(CONFIG_EFI)
	return efi.unaccepted != EFI_INVALID_TABLE_ADDR;
#else
	return false;
#endif
}

static int pmem_phys_open(struct inode *inode, struct file *file)
{
	int err;

	if (!capable(CAP_SYS_RAWIO))
		return -EPERM;
	err = security_locked_down(LOCKDOWN_KCORE);
	if (err)
		return err;
	if (file->f_mode & FMODE_WRITE) {
#ifdef PMEM_PHYS_WRITE
		if (!writable)
			return -EPERM;
		err = security_locked_down(LOCKDOWN_DEV_MEM);
		if (err)
			return err;
#else
		return -EPERM;
#endif
	}
	if (has_unaccepted_memory()) {
		pr_warn_once(PMEM_PHYS_NAME ": refused: the firmware hands over unaccepted memory (TDX/SEV-SNP lazy acceptance)\n");
		return -EOPNOTSUPP;
	}
	return 0;
}

static const struct file_operations pmem_phys_fops = {
	.owner = THIS_MODULE,
	.open = pmem_phys_open,
	.read = pmem_phys_read,
#ifdef PMEM_PHYS_WRITE
	.write = pmem_phys_write,
#endif
	.llseek = default_llseek,
};

static struct miscdevice pmem_phys_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = PMEM_PHYS_NAME,
	.fops = &pmem_phys_fops,
	.mode = 0400,
};

static int __init pmem_phys_init(void)
{
	int err;

#ifdef PMEM_PHYS_WRITE
	/* Any lockdown mode forbids writing physical memory, as /dev/mem. */
	if (security_locked_down(LOCKDOWN_DEV_MEM)) {
		pr_err(PMEM_PHYS_NAME ": the write build refuses to load under kernel lockdown\n");
		return -EPERM;
	}
	if (writable)
		pmem_phys_dev.mode = 0600;
#endif
	err = misc_register(&pmem_phys_dev);
	if (err)
		return err;
#ifdef PMEM_PHYS_WRITE
	if (writable) {
		add_taint(TAINT_USER, LOCKDEP_STILL_OK);
		pr_warn(PMEM_PHYS_NAME ": version " PMEM_PHYS_VERSION ", /dev/" PMEM_PHYS_NAME
			" WRITABLE: root can overwrite System RAM; kernel tainted; every write is logged\n");
		return 0;
	}
	pr_info(PMEM_PHYS_NAME ": version " PMEM_PHYS_VERSION " (write build, writes off), /dev/"
		PMEM_PHYS_NAME " (read-only)\n");
#else
	pr_info(PMEM_PHYS_NAME ": version " PMEM_PHYS_VERSION ", /dev/" PMEM_PHYS_NAME " (read-only)\n");
#endif
	return 0;
}

static void __exit pmem_phys_exit(void)
{
	misc_deregister(&pmem_phys_dev);
}

module_init(pmem_phys_init);
module_exit(pmem_phys_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("pmem");
#ifdef PMEM_PHYS_WRITE
MODULE_DESCRIPTION("Physical memory device for pmem, write build (/dev/" PMEM_PHYS_NAME ")");
#else
MODULE_DESCRIPTION("Read-only physical memory device for pmem (/dev/" PMEM_PHYS_NAME ")");
#endif
MODULE_VERSION(PMEM_PHYS_VERSION);
