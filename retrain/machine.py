"""What machine this is, in the words a figure should name it: the CPU model, its widest AVX
and the cores this process may use. No TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """/proc/cpuinfo's model name, its widest AVX and the core count, e.g.
    'AMD EPYC 7B13 (AVX2, 2 cores)'."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    avx = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({avx}, {len(os.sched_getaffinity(0))} cores)"
