/*
 * bcryptprimitives.dll with the one function Rust's standard library needs.
 *
 * Rust >= 1.78 gets random bytes (HashMap keys) from ProcessPrng in
 * bcryptprimitives.dll, imported at load time. Debian 12's Wine 8.0 has no
 * such DLL, so every Rust-built .exe fails to start there (exit code 53).
 * wine-test.sh builds this file with mingw and puts the DLL into the
 * system32 of the test's own WINEPREFIX; nothing else is changed.
 *
 * ProcessPrng(data, len) fills `data` and always returns TRUE on Windows;
 * here it draws from RtlGenRandom (advapi32!SystemFunction036), which Wine
 * implements.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        /* RtlGenRandom takes a ULONG length: feed it in pieces. */
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
