"""llama.cpp's `llama-server` for the tests that drive it (only where a binary is on PATH)."""

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

LLAMA_SERVER = shutil.which("llama-server")


@contextlib.contextmanager
def llama_server(gguf, *flags: str):
    """Serve `gguf` on a free loopback port until /health answers; yields the base URL (no /v1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([LLAMA_SERVER, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, "llama-server exited: it could not load the GGUF"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
