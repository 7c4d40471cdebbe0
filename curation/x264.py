"""libx264 options that keep its output a pure function of the input on this CPU.

On CPUs with AVX-512, libx264's AVX-512 code gave run-to-run different bytes for the same frames
at some sizes (one thread, fixed crf and preset; 96-320 px wide on this machine's Xeon, e.g. 6 of
28 video/size pairs of the shared videos at veryfast, 16 of 24 stage clips), which breaks the
byte-identical rerun of clip extraction and of shards. Capping x264's asm at AVX2 gives identical
bytes every time at the same CPU cost. Only the levels /proc/cpuinfo reports are listed: naming one
the CPU lacks would make x264 use it and crash.
"""

from __future__ import annotations

import functools

# x264 asm levels up to AVX2 and the /proc/cpuinfo flag each needs (x264's own names).
_BELOW_AVX512 = (
    ("MMX2", "sse"), ("SSE", "sse"), ("SSE2", "sse2"), ("SSE3", "pni"), ("SSSE3", "ssse3"),
    ("SSE4.1", "sse4_1"), ("SSE4.2", "sse4_2"), ("LZCNT", "abm"), ("AVX", "avx"), ("FMA3", "fma"),
    ("BMI1", "bmi1"), ("BMI2", "bmi2"), ("AVX2", "avx2"),
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def asm_param() -> str:
    """'asm=...' capping x264 at AVX2 on an AVX-512 CPU; '' where no cap is needed (or no cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = set(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), []))
    except OSError:
        return ""
    if "avx512f" not in flags:
        return ""
    return "asm=" + ",".join(name for name, flag in _BELOW_AVX512 if flag in flags)


def with_params(codec: str, params: str = "") -> dict[str, str]:
    """The `x264-params` stream option for `codec` ({} for other encoders): `params` (x264's
    key=value:key=value) plus the asm cap."""
    if codec != "libx264":
        return {"x264-params": params} if params else {}
    joined = ":".join(p for p in (params, asm_param()) if p)
    return {"x264-params": joined} if joined else {}
