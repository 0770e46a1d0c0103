"""An AOTInductor package called through its C ABI (hkllm/serve/aoti.py) computes what torch's own
loader computes, lets other Python threads run while it does, and where a package does not hold
its whole program in one library, torch's loader takes it."""

import shutil
import sys
import threading
import zipfile

import pytest
import torch

from hkllm.serve.aoti import Program, load_program

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                reason="no C++ compiler for inductor")


class Matmuls(torch.nn.Module):
    """A few milliseconds of work on one thread, writing into one of its inputs as the decoding step does."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) / 16)

    def forward(self, x, out):
        for _ in range(12):
            x = torch.tanh(x @ self.w)
        out.add_(1.0)
        return x.sum(-1)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        program = torch.export.export(Matmuls(), (torch.randn(256, 256), torch.zeros(3)))
        path = tmp_path_factory.mktemp("aoti") / "matmuls.pt2"
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    finally:
        torch.set_num_threads(before)
    return path


def test_program_computes_what_torch_loader_computes(package):
    ours, torch_loader = load_program(package), torch._inductor.aoti_load_package(str(package))
    assert isinstance(ours, Program) and (ours.num_inputs, ours.num_outputs) == (2, 1)
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    mine, theirs = torch.zeros(3), torch.zeros(3)
    assert torch.equal(ours(x, mine), torch_loader(x, theirs))
    assert mine.tolist() == [1.0] * 3 == theirs.tolist()          # the input written in place, as the step's KV table
    assert ours(x, mine).shape == (256,) and mine.tolist() == [2.0] * 3
    with pytest.raises(ValueError, match="takes 2 tensors"):
        ours(x)


def test_program_releases_the_gil_while_it_runs(package):
    """A second thread, woken just before one call, gets the GIL during that call only if the
    program lets it go: with a switch interval far longer than the call, CPython would not take
    it from a thread that holds it (torch's own loader: the count stays 0)."""
    program = load_program(package)
    x, out = torch.randn(256, 256), torch.zeros(3)
    count, go, stop = [0], threading.Event(), False

    def spin():
        go.wait()
        while not stop:
            count[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(1)                     # as the program was compiled, and as the engine runs it
    try:
        program(x, out)                          # a first call may load libraries
        sys.setswitchinterval(0.5)
        go.set()
        program(x, out)
        seen = count[0]
    finally:
        stop = True
        sys.setswitchinterval(interval)
        torch.set_num_threads(threads)
        spinner.join()
    assert seen > 0


def test_a_package_with_files_beside_its_library_goes_to_torch_loader(package, tmp_path):
    odd = tmp_path / "odd.pt2"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(odd, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
            if item.filename.endswith(".so"):
                dst.writestr(item.filename.rsplit("/", 1)[0] + "/weights.bin", b"\0")
    with pytest.raises(ValueError, match="not one shared library"):
        Program(odd)
    assert not isinstance(load_program(odd), Program)
