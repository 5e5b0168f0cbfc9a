"""What this machine's processors can do natively (decides bf16 use on the CPU)."""

from __future__ import annotations

import functools
from pathlib import Path

# CPU feature flags (Linux /proc/cpuinfo) that mean bfloat16 arithmetic in hardware. Where
# they are absent, PyTorch emulates bf16 on the CPU: slower than float32, never used.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False
