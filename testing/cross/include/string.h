/* Lint-only stand-in (see TargetConditionals.h): the four functions ring's C uses. */
#ifndef PMEM_STRING_STUB
#define PMEM_STRING_STUB
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#endif
