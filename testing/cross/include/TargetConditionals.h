/* Lint-only stand-in for the macOS SDK header of the same name: lets ring's
 * build script compile its C for x86_64-apple-darwin on Linux so that
 * scripts/test.sh can run clippy for macOS. Real macOS builds use the SDK. */
#ifndef PMEM_TARGET_CONDITIONALS_STUB
#define PMEM_TARGET_CONDITIONALS_STUB
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#endif
