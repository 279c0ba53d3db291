/* Lint-only stand-in (see TargetConditionals.h). */
#ifndef PMEM_ASSERT_STUB
#define PMEM_ASSERT_STUB
#define assert(x) ((void)0)
#endif
