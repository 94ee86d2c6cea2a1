"""Start, measure and stop the processes under test, each on a free loopback port.

The upstream, relay, LiteLLM's proxy and the ceiling each run as their own process group, pinned
to the CPUs they are given, so the load generator never shares a core with the server it measures.
LiteLLM is installed from PyPI into `bench/.venv-litellm/`, never into relay's environment.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .client import Connection, HTTPError

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]==1.103.7"
_RELAY_BIN = Path(sys.executable).with_name("relay")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_file_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def split_cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, load CPUs): the first CPU for the server under test, the rest for load."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


class Service:
    """One process tree on a loopback port, pinned to `cpus`, logging to `log_path`."""

    def __init__(
        self, name: str, argv: list[str], port: int, *, cpus: Iterable[int], log_dir: Path,
        env: dict[str, str] | None = None, ready_path: str | None = None, cwd: Path = REPO_DIR,
        stop_signal: int = signal.SIGTERM, inherit_env: bool = True,
    ) -> None:
        self.name, self.port = name, port
        self.stop_signal = stop_signal
        self.ready_path = ready_path
        self.log_path = log_dir / f"{name}-{port}.log"
        pinned = set(cpus)
        # `env` adds to this process's environment, or with `inherit_env` False is all of it.
        full_env = {**(os.environ if inherit_env else {}), **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv, env=full_env, cwd=cwd, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, pinned),
        )
        self.cpus = sorted(pinned)

    def wait_ready(self, timeout: float = 60.0) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            conn = Connection("127.0.0.1", self.port, timeout=2)
        except OSError:
            return False
        try:
            if self.ready_path is None:
                return True
            status, _ = conn.request("GET", self.ready_path)
            return status == 200
        except (OSError, HTTPError):
            return False
        finally:
            conn.close()

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole tree so far (children that exited excluded)."""
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, self.stop_signal)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def start_upstream(cpus: Iterable[int], log_dir: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    return Service("upstream", argv, port, cpus=cpus, log_dir=log_dir).wait_ready()


def start_ceiling(upstream_port: int, cpus: Iterable[int], log_dir: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling", "--port", str(port),
            "--upstream", f"127.0.0.1:{upstream_port}"]
    return Service("ceiling", argv, port, cpus=cpus, log_dir=log_dir).wait_ready()


def start_floor(upstream_port: int, cpus: Iterable[int], log_dir: Path) -> Service:
    """bench/floor.py on gunicorn's gevent worker, one worker, as relay runs."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1",
            "--bind", f"127.0.0.1:{port}", "--keep-alive", "5", "--worker-connections", "10000",
            "--no-control-socket", "bench.floor:app"]
    env = {"FLOOR_UPSTREAM": f"127.0.0.1:{upstream_port}"}
    return Service("floor", argv, port, cpus=cpus, log_dir=log_dir, env=env).wait_ready()


@dataclass(frozen=True)
class Account:
    """A user of an accounts relay: the name and password to sign in with, and an API key."""

    username: str
    password: str = field(repr=False)
    api_key: str = field(repr=False)


# Limits and quotas on, each set so high that it never refuses: what they cost, not what they
# refuse (the `relay_limits` target, measured against `relay` in the same passes).
LIMITS_ON = {"RELAY_TOKENS_PER_DAY": str(10**15), "RELAY_REQUESTS_PER_MINUTE": str(10**9),
             "RELAY_ADDRESS_REQUESTS_PER_MINUTE": str(10**9), "RELAY_MAX_GENERATIONS": str(10**6),
             "RELAY_MAX_STREAMS_PER_USER": str(10**6), "RELAY_MAX_STREAMS_PER_ADDRESS": str(10**6),
             "RELAY_UPSTREAM_MAX_CONCURRENCY": str(10**6)}


def start_relay(
    upstream_port: int, cpus: Iterable[int], log_dir: Path, *, workers: int,
    heartbeat: float = 15.0, model: str = "bench-n64-t0-p0", source: Path | None = None,
    limits: bool = False,
) -> Service:
    """`relay serve` with a fresh instance folder (fresh SQLite), pointed at the upstream; with
    `source`, the relay package of that checkout (first on PYTHONPATH) rather than this one;
    with `limits`, `LIMITS_ON` set."""
    port = free_port()
    env = _relay_env(log_dir / f"relay-instance-{port}", upstream_port, heartbeat, model)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source.resolve()),
                                                          env.get("PYTHONPATH")]))
    if limits:
        env.update(LIMITS_ON)
    name = "relay_b" if source else "relay_limits" if limits else "relay"
    return _serve_relay(name, port, env, cpus, log_dir, workers)


def prepare_accounts_relay(
    upstream_port: int, log_dir: Path, model: str = "bench-n64-t0-p0",
) -> tuple[dict[str, str], Account]:
    """A fresh instance folder for a `RELAY_AUTH=accounts` relay, in which the operator's CLI
    made one user and an API key of theirs: the relay's environment and that account. (Only
    subprocesses: the run does this in a thread while it starts the other servers.)"""
    env = _relay_env(log_dir / "relay-accounts-instance", upstream_port, 15.0, model)
    env["RELAY_AUTH"] = "accounts"
    username, password = "bench", secrets.token_urlsafe(18)
    _relay_cli(env, ["db", "upgrade"])
    _relay_cli(env, ["users", "create", username, "--password-stdin"], stdin=password + "\n")
    created = _relay_cli(env, ["keys", "create", username, "--name", "bench"])
    return env, Account(username, password, created.splitlines()[-1].strip())


def start_accounts_relay(
    env: dict[str, str], cpus: Iterable[int], log_dir: Path, *, workers: int,
) -> Service:
    """`relay serve` in the instance folder `prepare_accounts_relay` made."""
    return _serve_relay("relay_accounts", free_port(), env, cpus, log_dir, workers)


def _relay_env(instance: Path, upstream_port: int, heartbeat: float, model: str) -> dict[str, str]:
    """The environment of a relay with its own instance folder (made here), pointed at the
    upstream, none of this process's relay, OpenAI or database settings inherited."""
    instance.mkdir(parents=True)
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update({
        "RELAY_INSTANCE_PATH": str(instance), "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "RELAY_HEARTBEAT_SECONDS": str(heartbeat), "RELAY_DEFAULT_MODEL": model,
        "RELAY_UPSTREAM_TIMEOUT_SECONDS": "60", "RELAY_LOG_LEVEL": "WARNING",
    })
    return env


def _relay_cli(env: dict[str, str], args: list[str], stdin: str = "") -> str:
    """Run `relay ARGS` in the instance folder; its stdout (its error in the exception)."""
    done = subprocess.run([str(_RELAY_BIN), *args], env=env, cwd=env["RELAY_INSTANCE_PATH"],
                          input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"relay {args[0]} {args[1]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _serve_relay(
    name: str, port: int, env: dict[str, str], cpus: Iterable[int], log_dir: Path, workers: int,
) -> Service:
    argv = [str(_RELAY_BIN), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    service = Service(name, argv, port, cpus=cpus, log_dir=log_dir, env=env,
                      ready_path="/healthz", cwd=Path(env["RELAY_INSTANCE_PATH"]),
                      stop_signal=signal.SIGINT, inherit_env=False)  # env: all it gets
    return service.wait_ready()


def litellm_installed() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def install_litellm() -> None:
    """Create bench/.venv-litellm and install LiteLLM's proxy into it (skipped when present)."""
    if litellm_installed():
        return
    print(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (once) ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "--quiet", LITELLM_REQUIREMENT],
        check=True,
    )


def start_litellm(
    upstream_port: int, models: list[str], cpus: Iterable[int], log_dir: Path, *, workers: int
) -> Service:
    """LiteLLM's proxy with each bench model routed to the upstream as `openai/<model>`."""
    port = free_port()
    config = log_dir / f"litellm-{port}.yaml"
    lines = ["model_list:"]
    for model in models:
        lines += [
            f'  - model_name: "{model}"', "    litellm_params:",
            f'      model: "openai/{model}"',
            f'      api_base: "http://127.0.0.1:{upstream_port}/v1"', '      api_key: "bench"',
            "      num_retries: 0", "      timeout: 120",
        ]
    lines += ["litellm_settings:", "  telemetry: false", "  num_retries: 0",
              "  request_timeout: 120"]
    config.write_text("\n".join(lines) + "\n")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False"}
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host",
            "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]
    service = Service("litellm", argv, port, cpus=cpus, log_dir=log_dir, env=env,
                      ready_path="/health/liveliness")
    return service.wait_ready(timeout=120)
