"""Start and stop OpenAI-compatible servers for the serve benchmarks (not a benchmark itself)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "runs/quickstart/cpt"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_model(path: Path) -> Path:
    if not (path / "config.json").exists():
        sys.exit(f"{path}: no model here — run `make demo` first (it trains runs/quickstart/*)")
    return path


@contextlib.contextmanager
def server(argv: list[str], port: int, ready_path: str = "/v1/models", timeout: float = 180, env: dict | None = None,
           log_says: tuple[str, ...] = ()):
    """Run a server command, wait until ready_path answers 200 (and, with log_says, until its log
    holds one of those strings), yield (base_url, Popen), stop it."""
    log_path = REPO / f"runs/bench_{Path(argv[0]).name}_{port}.log"
    log = open(log_path, "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{argv[0]} not ready after {timeout} s; see {log.name}")
            time.sleep(0.5)
        while log_says and not any(w in log_path.read_text(errors="replace") for w in log_says):
            if proc.poll() is not None or time.time() > deadline + 900:
                raise RuntimeError(f"{argv[0]}: none of {log_says} in {log.name}")
            time.sleep(1)
        yield url + "/v1", proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def hkllm_serve(model: Path, port: int, *extra: str):
    """`hkllm serve`, measured once its decoding step is compiled (or known not to be): it compiles
    in the background while the eager step serves."""
    compiles = "--eager" not in extra and "transformers" not in extra
    return server([str(BIN / "hkllm"), "serve", str(model), "--port", str(port), "--no-auth",
                   "--state-dir", str(REPO / f"runs/bench_state_{port}"), *extra], port,
                  log_says=("decode step compiled", "decode step not compiled") if compiles else ())


def gguf_for(model: Path) -> Path:
    """The model as llama.cpp reads it (`hkllm export gguf --type f32`: greedy tokens equal to
    transformers'), exported once into runs/bench_gguf/."""
    out = REPO / f"runs/bench_gguf/{model.parent.name}-{model.name}-f32.gguf"
    if not out.exists():
        subprocess.run([str(BIN / "hkllm"), "export", "gguf", str(model), "--out", str(out), "--type", "f32"],
                       check=True)
    return out


def llama_server(binary: str, model: Path, port: int, threads: int, slots: int):
    """llama.cpp's server on `model`'s GGUF: `slots` sequences decoded together, each with 1024
    positions of context."""
    return server([binary, "-m", str(gguf_for(model)), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
                   "-np", str(slots), "-c", str(slots * 1024), "--no-warmup"], port, ready_path="/health")
