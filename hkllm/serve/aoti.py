"""An AOTInductor program (a `.pt2` from `torch._inductor.aoti_compile_and_package`) called through
its C ABI, with the GIL released while it runs.

    step = load_program("step.pt2")        # torch's own loader where this one cannot load the package
    logits = step(next_ids, pos, span_positions, kv)

Why not only `torch._inductor.aoti_load_package`: its call holds the GIL for the whole program
(a pybind function without a release; measured in torch 2.13: a Python thread spinning beside
2 s of its calls ran twice, at a 0.2 s switch interval, where beside eager ops, which release
the GIL, the calls themselves starved). In `hkllm serve` the HTTP loop shares that GIL with the
engine's thread, so at one user the 0.2-0.3 ms step and the loop's per-token work ran one after
the other. ctypes releases the GIL around a foreign call, and what the package holds is a shared
library (weights embedded) with the C entry points torch's loader calls
(torch/csrc/inductor/aoti_runtime/interface.h): create a container, run it on tensor handles
that it steals, read the output handles back.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

log = logging.getLogger("hkllm.serve")

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype, _new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_MODEL_FILES = (".so", ".cpp", ".json")      # what a package with its weights in the library holds


class Program:
    """One AOTInductor model container, loaded from the package's shared library."""

    def __init__(self, package: str | Path):
        folder = Path(tempfile.mkdtemp(prefix="hkllm-aoti-"))
        try:
            # CDLL, not PyDLL: its calls release the GIL. The file may go once it is mapped.
            self._lib = ctypes.CDLL(str(_extract_library(Path(package), folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._lib.AOTInductorGetLastError.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        self._handle = ctypes.c_void_p()
        self._check(self._lib.AOTInductorModelContainerCreateWithDevice(
            ctypes.byref(self._handle), ctypes.c_size_t(1), b"cpu", None), "create")
        counts = []
        for what in ("Inputs", "Outputs"):
            n = ctypes.c_size_t()
            self._check(getattr(self._lib, f"AOTInductorModelContainerGetNum{what}")(self._handle, ctypes.byref(n)), what)
            counts.append(n.value)
        self.num_inputs, self.num_outputs = counts
        self._run = self._lib.AOTInductorModelContainerRun
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                              ctypes.c_void_p, ctypes.c_void_p]
        self._inputs, self._outputs = ctypes.c_void_p * self.num_inputs, ctypes.c_void_p * self.num_outputs

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if len(tensors) != self.num_inputs:
            raise ValueError(f"the program takes {self.num_inputs} tensors, not {len(tensors)}")
        # New handles (at::Tensor references) that the run steals, so the caller's tensors stay its own.
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(tensors)
        inputs, outputs = self._inputs(*[_capsule_pointer(h, None) for h in handles]), self._outputs()
        self._check(self._run(self._handle, inputs, self.num_inputs, outputs, self.num_outputs, None, None), "run")
        out = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_new_capsule(p, None, None) for p in outputs])
        return out[0] if self.num_outputs == 1 else out

    def _check(self, code: int, what: str) -> None:
        if code:
            message = ctypes.c_char_p()
            self._lib.AOTInductorGetLastError(ctypes.byref(message))
            raise RuntimeError(f"AOTInductor {what} failed: {(message.value or b'no message').decode(errors='replace')}")

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.AOTInductorModelContainerDelete(handle)


def _extract_library(package: Path, folder: Path) -> Path:
    """The package's one shared library, written into `folder`; ValueError for a package whose
    weights (or anything else the container needs) live outside it."""
    with zipfile.ZipFile(package) as z:
        model = [n for n in z.namelist() if "/data/aotinductor/model/" in f"/{n}" and not n.endswith("/")]
        libraries = [n for n in model if n.endswith(".so")]
        others = [n for n in model if not n.endswith(_MODEL_FILES)]
        if len(libraries) != 1 or others:
            raise ValueError(f"{package}: not one shared library holding the whole program "
                             f"({len(libraries)} libraries; other files: {others[:3]})")
        target = folder / "program.so"
        with z.open(libraries[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def load_program(package: str | Path):
    """A callable for the package: a `Program` (the GIL released while it runs) where the package
    allows, else torch's own loader (the GIL held), saying so."""
    try:
        return Program(package)
    except (OSError, ValueError, AttributeError, RuntimeError, zipfile.BadZipFile) as e:
        log.info("AOTInductor package %s through torch's loader (the GIL held while it runs): %s", package, e)
        return torch._inductor.aoti_load_package(str(package))
