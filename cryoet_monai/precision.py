"""One precision rule for training and inference: native reduced precision or fp32.

Reduced-precision autocast only pays where the hardware computes it natively. On CPUs without
AVX512-BF16 or AMX, oneDNN emulates bf16 and a training step of the shipped network is ~11x
slower than fp32 (6.5 s vs 0.59 s per 8x128² step, measured on an AVX2-only EPYC), so "auto"
means: bf16 on CPUs with native bf16, bf16 on CUDA GPUs that support it, fp16 on older GPUs,
fp32 everywhere else. The CPU feature test reads the kernel's CPU flags (``/proc/cpuinfo``)
instead of a private torch query, and honours oneDNN's documented dispatch cap
(``ONEDNN_MAX_CPU_ISA``, older name ``DNNL_MAX_CPU_ISA``): capped below AVX512_CORE_BF16, oneDNN
emulates bf16 even on a CPU that has it, so the rule gives fp32 (this is also how the
benchmarks emulate an AVX2-only machine on a newer one).
"""

from __future__ import annotations

import logging
import os
import platform
from functools import cache, lru_cache

import torch

__all__ = ["PRECISIONS", "cpu_features", "cpu_has_native_bf16", "onednn_isa_cap", "resolve_autocast_dtype",
           "parse_bool"]

logger = logging.getLogger(__name__)

#: accepted values of every ``precision`` option
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA`` values) under which it has no native bf16 instructions
_CAPS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                "AVX512_CORE_VNNI"})


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> dict[str, bool]:
    """The CPU's SIMD features that decide CPU speed (AVX2, AVX-512, bf16, VNNI, AMX), as booleans."""
    flags = _cpu_flags()
    return {name: name in flags for name in _REPORTED_FLAGS}


def onednn_isa_cap() -> str | None:
    """The ISA cap set for oneDNN's dispatcher (``ONEDNN_MAX_CPU_ISA`` or ``DNNL_MAX_CPU_ISA``,
    upper case), or None when unset or ``ALL``/``DEFAULT``."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    cap = cap.strip().upper()
    return None if cap in ("", "ALL", "DEFAULT") else cap


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16) and oneDNN is not capped
    below it (:func:`onednn_isa_cap`), Linux x86 only.

    Apple silicon and other platforms report False: fp32 is the safe default there.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if onednn_isa_cap() in _CAPS_WITHOUT_BF16:
        return False
    return any(flag in _cpu_flags() for flag in _BF16_FLAGS)


@cache
def _log_decision(precision: str, kind: str, decision: str) -> None:
    """Log each (precision, device type) decision once per process."""
    logger.info("precision %s on %s: %s", precision, kind, decision)



def resolve_autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """Map ``precision`` (one of :data:`PRECISIONS`) to an autocast dtype for ``device``.

    ``None`` means fp32 (no autocast). "auto" follows the rule in the module docstring; the
    decision is logged once per (precision, device type).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        dtype = None
    elif precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "fp16":
        dtype = torch.float16
    elif kind == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif kind == "cpu":
        dtype = torch.bfloat16 if cpu_has_native_bf16() else None
    else:
        dtype = None
    _log_decision(precision, kind, "fp32" if dtype is None else str(dtype))
    return dtype


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(value: object, name: str = "value") -> bool:
    """Strict boolean for config values: ``True/False``, ``1/0`` and the strings
    ``true/false/1/0/yes/no/on/off`` (any case). Anything else is a ``ValueError`` naming ``name``
    (``bool("false")`` is True, which silently turned options on).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError(f"{name}: expected a boolean (true/false/1/0), got {value!r}")
