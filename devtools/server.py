"""Start a real ComfyUI server (main.py) with the ShapeFirst pack and chosen checkpoints.

Everything the server writes (outputs, temp files, user settings, its database) goes to one
base folder given with ``--base-directory``; its ``custom_nodes`` holds only this pack and its
``models/checkpoints`` only links to the given checkpoint files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .paths import PACK_DIR_NAME, REPO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.unlink()
    link.symlink_to(target, target_is_directory=target.is_dir())


def prepare_base(base: Path, checkpoints: list[Path]) -> Path:
    """Create the server's base folder: custom_nodes/<pack> and models/checkpoints links."""
    base = Path(base).resolve()
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    for d in ("input", "output", "temp", "user"):
        (base / d).mkdir(exist_ok=True)
    _link(REPO, base / "custom_nodes" / PACK_DIR_NAME)
    for ckpt in checkpoints:
        ckpt = Path(ckpt).resolve()
        _link(ckpt, base / "models" / "checkpoints" / ckpt.name)
    return base


def _parent_death_signal():
    """A function for Popen's preexec_fn that makes the child get SIGTERM when the thread that started
    it ends, however it ends (Linux prctl PR_SET_PDEATHSIG); None where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal():
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal


class ComfyServer:
    """A ComfyUI server process with the pack. ``stop()`` (or leaving the ``with`` block) ends it; with
    ``die_with_parent`` (Linux) it also ends when the thread that started it ends, even by SIGKILL, so
    no server is left behind: start it from a thread that outlives it (the main thread)."""

    def __init__(self, python: Path, comfyui: Path, base: Path, port: int | None = None,
                 host: str = "127.0.0.1", log_path: Path | None = None, extra_args: list[str] = (),
                 cpu: bool = True, env: dict | None = None, new_session: bool = False,
                 die_with_parent: bool = True):
        self.die_with_parent = die_with_parent
        self.python, self.comfyui, self.base = Path(python), Path(comfyui), Path(base)
        self.extra_args = list(extra_args)  # more main.py options, e.g. ["--front-end-root", DIR]
        self.port = port or free_port()
        self.host = host
        self.log_path = Path(log_path) if log_path else self.base / "server.log"
        self.cpu = cpu  # False: compute on the GPU the environment shows it (e.g. CUDA_VISIBLE_DEVICES in env)
        self.env = dict(env or {})  # added to this process's environment
        self.new_session = new_session  # True: a terminal's Ctrl-C reaches only the parent, which stops it
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "ComfyServer":
        """Start main.py and return at once (``wait_ready`` waits for it to answer)."""
        cmd = [str(self.python), "main.py", *(["--cpu"] if self.cpu else []), "--listen", self.host,
               "--port", str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
               "--preview-method", "none", "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
               *self.extra_args]
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=self.new_session,
                                     preexec_fn=_parent_death_signal() if self.die_with_parent else None)
        return self

    def wait_ready(self, timeout: float = 180.0) -> "ComfyServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s; see {self.log_path}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get_json(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def post_json(self, path: str, data, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode()
            return json.loads(body) if body else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
