"""Start and stop a real relay (`relay serve`: migrations, then gunicorn with gevent workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

RELAY_BIN = Path(sys.executable).with_name("relay")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare_environ() -> dict[str, str]:
    """This process's environment without relay's settings (RELAY_*, OPENAI_*, DATABASE_URL,
    REDIS_URL), so that only a test's own settings reach a `relay` it runs."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }


class RelayServer:
    """One relay server on a free loopback port; `env` adds to or overrides the environment."""

    def __init__(self, instance_path: Path, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = instance_path / f"relay-{self.port}.log"
        full_env = bare_environ()
        full_env.update({
            "RELAY_INSTANCE_PATH": str(instance_path), "RELAY_HEARTBEAT_SECONDS": "1",
            "RELAY_MOCK_DELAY_MS": "0", **env,
        })
        instance_path.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(RELAY_BIN), "serve", "--bind", f"127.0.0.1:{self.port}", "--workers",
             str(workers)],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=instance_path,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"relay did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the master and every worker at once, as a crashed host would vanish."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """Ask for a graceful shutdown (SIGTERM), as a process manager would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
