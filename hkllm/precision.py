"""Precision chosen by the hardware, for training, serving and evaluation alike.

    from hkllm.precision import choose
    p = choose("auto")            # Precision(name="fp32", reason="CPU has AVX2 only: bf16 would be emulated")
    p.torch_dtype                 # torch.float32

`auto` picks bf16 on a CUDA device that supports it and on a CPU with native bf16 (AVX512_BF16
or AMX), fp32 otherwise. On a CPU without them, torch *emulates* bf16: a 2048x256 @ 256x768 matmul
took 6 ms in fp32 and 640 ms under bf16 autocast on a 2-core AVX2 EPYC, and the quickstart trained
at 78 instead of 2,400 tokens/s. Asking for bf16 there anyway works, with one warning that names
the slowdown measured on this machine. `HKLLM_PRECISION=fp32|bf16|fp16|auto` overrides `auto`
(tests pin fp32 so that numerics do not depend on the machine).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass

from hkllm.errors import UserError

CHOICES = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    name: str          # fp32 | bf16 | fp16
    reason: str
    device: str        # cuda | cpu

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def as_dict(self) -> dict:
        return {"precision": self.name, "device": self.device, "reason": self.reason}


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16?, what the CPU offers), from /proc/cpuinfo flags and torch's dispatch level."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()   # DEFAULT, AVX2, AVX512, AMX ...
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    # ATEN_CPU_CAPABILITY below AVX512 makes torch dispatch as if the units were absent.
    if native and capability.upper() in ("AVX512", "AMX", "AVX512_BF16"):
        return True, f"CPU has native bf16 ({', '.join(native)}; torch dispatch {capability})"
    if native:
        return False, f"CPU has {', '.join(native)} but torch dispatches at {capability}"
    return False, f"CPU has {capability} only, no AVX512_BF16 or AMX: bf16 would be emulated"


@functools.lru_cache(maxsize=1)
def measured_bf16_slowdown() -> float:
    """bf16-autocast time / fp32 time of one 512x256 @ 256x768 matmul on this CPU (best of 3)."""
    import torch

    a, b = torch.randn(512, 256), torch.randn(256, 768)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    fp32 = best(lambda: a @ b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = best(lambda: a @ b)
    return bf16 / max(fp32, 1e-9)


_warned: set[str] = set()


def choose(requested: str = "auto", purpose: str = "training") -> Precision:
    """The precision to use; `requested` is a recipe's train.precision or a server flag."""
    import torch

    asked = "asked for"
    if requested == "auto" and os.environ.get("HKLLM_PRECISION"):
        requested, asked = os.environ["HKLLM_PRECISION"], f"HKLLM_PRECISION={os.environ['HKLLM_PRECISION']}"
    if requested not in CHOICES:
        raise UserError(f"precision {requested!r}: expected one of {', '.join(CHOICES)}")
    if torch.cuda.is_available():
        if requested == "auto":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", f"CUDA device {torch.cuda.get_device_name(0)} supports bf16", "cuda")
            return Precision("fp16", f"CUDA device {torch.cuda.get_device_name(0)} has no bf16", "cuda")
        return Precision(requested, asked, "cuda")
    native, offer = cpu_bf16_support()
    if requested == "auto":
        return Precision("bf16" if native else "fp32", offer, "cpu")
    if requested == "fp16":
        raise UserError("precision fp16 needs a CUDA GPU (fp16 mixed precision is not supported on CPU); "
                        "use auto, fp32 or bf16 / CPU 不支援 fp16")
    if requested == "bf16" and not native and "bf16" not in _warned:
        _warned.add("bf16")
        print(f"hkllm: warning: bf16 {purpose} was asked for, but {offer}: measured here, a bf16 matmul takes "
              f"{measured_bf16_slowdown():.0f}x as long as in fp32. Use precision auto (fp32 here) unless you are "
              f"testing bf16 itself. / 此 CPU 只能模擬 bf16，會慢好多。", file=sys.stderr, flush=True)
    return Precision(requested, f"{asked}; {offer}", "cpu")
