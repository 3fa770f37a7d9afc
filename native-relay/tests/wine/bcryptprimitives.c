/*
 * A stand-in for Windows' bcryptprimitives.dll, for running the Windows build under Wine 8
 * (Debian 12's), which lacks it. Rust's standard library (1.78+) draws its random bytes
 * from ProcessPrng there, as Windows 10 and later provide it; this forwards to
 * RtlGenRandom (advapi32's SystemFunction036), which Wine has. Test support only: it is
 * never shipped, and real Windows uses its own DLL.
 *
 *   x86_64-w64-mingw32-gcc -O2 -shared -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) {
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}
