"""Three hosts on one machine: Linux network namespaces joined by veth pairs to a bridge.

    with Cluster(tmp_dir) as c:          # namespaces + bridge (skip if they cannot be made)
        c.start_ray()                    # head on A, workers on B and C, each with host_X: 1
        c.start_redis()                  # redis-server with requirepass on A's address
        c.run("a", ["forge", "launch", ...])
        c.kill_host("c")                 # SIGKILL every process of host C

Addresses: 10.213.7.1 (A), .2 (B), .3 (C) on a bridge that has no address and no uplink, so
nothing these hosts send can leave them; each namespace has only `lo` and its veth. Teardown kills
every process in the namespaces (by pid, from `ip netns pids`), deletes the namespaces, the bridge
and the temporary directories — also when a test fails, and namespaces left by a harness whose
process died are removed when the next one starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUBNET = "10.213.7"  # private, used only inside these namespaces
HOSTS = {"a": 1, "b": 2, "c": 3}
PREFIX = "fgc"  # namespaces fgc<pid><h>, bridge fgb<pid>, veths fgv<pid><h> / fgp<pid><h>
RAY_PORT = 6379
REDIS_PORT = 6380
DASHBOARD_PORT = 8265
VENV_BIN = Path(sys.executable).parent
# node death is noticed within ~health_check_period × threshold (Ray's defaults: 3 s × 5)
RAY_HEAD_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_SYS_ADMIN"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}probe{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode:
        return f"`ip netns add` failed: {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _remove_stale() -> None:
    """Namespaces and bridges of harnesses whose process is gone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and name[len(PREFIX) : -1].isdigit():
            pid = int(name[len(PREFIX) : -1])
            if not Path(f"/proc/{pid}").exists():
                _kill_ns(name)
                _ip("netns", "del", name, check=False)
                _ip("link", "del", f"fgb{pid}", check=False)


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _kill_ns(ns: str, rounds: int = 20) -> int:
    """SIGKILL every process in namespace `ns` until none is left; returns how many were killed."""
    killed = 0
    for _ in range(rounds):
        pids = [p for p in _ns_pids(ns) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


class Cluster:
    def __init__(self, root: Path) -> None:
        self.tag = str(os.getpid())
        self.root = Path(f"/tmp/{PREFIX}{self.tag}")  # short: Ray's unix sockets live under it
        self.work = root
        self.ns = {h: f"{PREFIX}{self.tag}{h}" for h in HOSTS}
        self.addr = {h: f"{SUBNET}.{i}" for h, i in HOSTS.items()}
        self.bridge = f"fgb{self.tag}"
        self.redis_password = "forge-cluster-test-pw"
        self.procs: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ network
    def __enter__(self) -> Cluster:
        _remove_stale()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for h, ns in self.ns.items():
            outer, inner = f"fgv{self.tag}{h}", f"fgp{self.tag}{h}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)

    def down(self) -> None:
        for ns in self.ns.values():
            _kill_ns(ns)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        for h, ns in self.ns.items():
            _ip("netns", "del", ns, check=False)
            _ip("link", "del", f"fgv{self.tag}{h}", check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ commands
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        path = f"{VENV_BIN}:{env.get('PATH', '')}"
        return {
            **env,
            "PATH": path,
            "RAY_ADDRESS": f"{self.addr['a']}:{RAY_PORT}",
            "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray 2.60 token auth, with a token of this cluster's own (not ~/.ray's)
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token"),
            **extra,
        }

    def cmd(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def run(self, host: str, argv: list[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
        env = kw.pop("env", None) or self.env()
        return subprocess.run(
            self.cmd(host, argv), capture_output=True, text=True, timeout=timeout, env=env, **kw
        )

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        env = kw.pop("env", None) or self.env()
        p = subprocess.Popen(self.cmd(host, argv), env=env, **kw)
        self.procs.append(p)
        return p

    def python(self, host: str, code: str, timeout: float = 60) -> str:
        out = self.run(host, [sys.executable, "-c", code], timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"python on {host} failed: {out.stderr[-2000:]}")
        return out.stdout

    # ------------------------------------------------------------------ services
    def start_ray(self, num_cpus: dict[str, int] | None = None) -> None:
        cpus = {"a": 1, "b": 1, "c": 1, **(num_cpus or {})}
        common = ["--disable-usage-stats", "--object-store-memory=100000000"]
        head = [
            "ray", "start", "--head",
            f"--node-ip-address={self.addr['a']}", f"--port={RAY_PORT}",
            f"--num-cpus={cpus['a']}", '--resources={"host_a": 1}',
            f"--temp-dir={self.root}/ray",
            "--include-dashboard=true", f"--dashboard-host={self.addr['a']}",
            f"--dashboard-port={DASHBOARD_PORT}",
            *common,
        ]  # fmt: skip
        out = self.run("a", head, env=self.env(**RAY_HEAD_ENV), timeout=180)
        if out.returncode:
            raise RuntimeError(f"ray start --head: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        for h in ("b", "c"):
            worker = [
                "ray", "start", f"--address={self.addr['a']}:{RAY_PORT}",
                f"--node-ip-address={self.addr[h]}",
                f"--num-cpus={cpus[h]}", f'--resources={{"host_{h}": 1}}',
                *common,
            ]  # fmt: skip
            out = self.run(h, worker, timeout=180)
            if out.returncode:
                raise RuntimeError(f"ray start on {h}: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        self.wait_nodes(3)

    def alive_nodes(self) -> list[str]:
        code = (
            "import ray, json; ray.init(address='auto', log_to_driver=False); "
            "print('NODES=' + json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))"
        )
        import json

        line = next(x for x in self.python("a", code).splitlines() if x.startswith("NODES="))
        return json.loads(line.removeprefix("NODES="))

    def wait_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(nodes := self.alive_nodes()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} Ray nodes expected, alive: {nodes}")
            time.sleep(1)

    def start_redis(self) -> str:
        """redis-server (the binary the embedded pool uses) on A's address, with a password."""
        from data_pool.server import find_redis_server

        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "auth.conf"
        conf.write_text(f'requirepass "{self.redis_password}"\n')
        conf.chmod(0o600)
        argv = [
            find_redis_server(), str(conf),
            "--bind", self.addr["a"], "--port", str(REDIS_PORT),
            "--dir", str(data), "--appendonly", "yes", "--save", "", "--daemonize", "no",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip
        self.popen("a", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = self.redis_url
        code = (
            "import redis, time\n"
            f"c = redis.Redis.from_url({url!r})\n"
            "for _ in range(100):\n"
            "    try:\n        c.ping(); break\n"
            "    except redis.ConnectionError:\n        time.sleep(0.1)\n"
            "print(c.ping())\n"
        )
        assert "True" in self.python("a", code)
        return url

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.addr['a']}:{REDIS_PORT}/0"

    def kill_host(self, host: str) -> int:
        """SIGKILL every process of `host` (its raylet, Ray's agents, every worker)."""
        return _kill_ns(self.ns[host])

    def pids(self, host: str) -> list[int]:
        return _ns_pids(self.ns[host])
