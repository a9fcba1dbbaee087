"""`forge launch` across three hosts (issue 19): placement, addresses, node failure, sweeps.

Hosts A, B, C are network namespaces (tests/cluster/harness.py) with a real Ray cluster (head on
A, workers on B and C, resources host_a/host_b/host_c) and a real redis-server with requirepass on
A's address. The tests of this module share that cluster and run in order: the node-failure test
kills host C, the sweep after it runs on the two hosts left.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import DASHBOARD_PORT, Cluster

pytestmark = pytest.mark.slow

VOWELS = Path(__file__).parents[1] / "forge" / "vowel_env.py"
FORGE = [sys.executable, "-m", "forge.cli", "launch"]
COMMON = [
    "model=tiny",
    "loop.prompts_per_step=2",
    "loop.group_size=2",
    "logger.console=false",
    "trainer.lr=1e-2",
    "env=custom",
    "env.name=vowels",
    "+env.settings.max_tokens=16",
    f"env.modules=[{VOWELS}]",
]
# engines on B, trainer ranks on A and C (gloo), env workers on B and C, gateway on A
THREE_HOSTS = [
    "cluster=auto",
    "pool=external",
    "placement=three_hosts",
    "loop.trainer_world_size=2",
    "loop.env_workers=2",
    # no ZeRO partitioning: a checkpoint of 2 ranks that 1 rank loads, optimizer state included
    # (DeepSpeed refuses a ZeRO-1/2/3 checkpoint at another world size, elastic_checkpoint or not)
    "trainer.zero_stage=0",
    "pool.retain_samples=true",
]
RAY_SYSTEM = ("ray::DashboardA", "raylet", "gcs_server", "ray::RuntimeEnv")  # ss names (15 chars)
LOOPBACK = re.compile(r"(^|[^0-9])(127\.\d+\.\d+\.\d+|localhost|\[::1\]|::1)([^0-9]|$)")


def launch_argv(run_dir: Path, redis_url: str | None, *overrides: str) -> list[str]:
    pool = [f"pool.redis_url={redis_url}"] if redis_url else []
    return [*FORGE, *COMMON, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}", *pool, *overrides]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def committed(run_dir: Path) -> dict[int, dict[str, Any]]:
    """trained.jsonl by step; a resumed run retrains the steps after its checkpoint: last wins."""
    return {r["step"]: r for r in rows(run_dir / "trained.jsonl")}


def pool_query(c: Cluster, prefix: str, expr: str) -> Any:
    """Evaluate `expr` (with `p`, a DataPool) on host A against the cluster's Redis, as JSON."""
    code = (
        "import json; from data_pool import PoolConfig, connect\n"
        f"p = connect(PoolConfig(redis_url={c.redis_url!r}, key_prefix={prefix!r}))\n"
        f"print(json.dumps({expr}))\n"
    )
    return json.loads(c.python("a", code).strip().splitlines()[-1])


def actor_nodes(c: Cluster) -> dict[str, list[str]]:
    """Class name → node addresses of its actors (alive or dead) in the cluster's state API."""
    out = c.run("a", ["ray", "list", "nodes", "--format", "json", "--limit", "100"])
    assert out.returncode == 0, out.stderr[-2000:]
    ip = {n["node_id"]: n["node_ip"] for n in json.loads(out.stdout)}
    out = c.run("a", ["ray", "list", "actors", "--detail", "--format", "json", "--limit", "1000"])
    assert out.returncode == 0, out.stderr[-2000:]
    placed: dict[str, list[str]] = {}
    for a in json.loads(out.stdout):
        placed.setdefault(a["class_name"], []).append(ip.get(a.get("node_id"), "?"))
    return {k: sorted(v) for k, v in placed.items()}


class Watch(threading.Thread):
    """While a run is in flight: every TCP socket of every process on the three hosts (`ss`), and,
    once the run recorded its addresses, an unauthenticated call to the gateway from host B."""

    def __init__(self, c: Cluster, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.c, self.run_dir = c, run_dir
        self.sockets: set[tuple[str, str, str, str, int]] = set()  # host, state, local, peer, pid
        self.unauthenticated: int | None = None
        self.names: dict[int, str] = {}
        self.extra_pids: set[int] = set()  # the driver and redis-server (gone after the run)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for h, ns in self.c.ns.items():
                out = subprocess.run(
                    ["ip", "netns", "exec", ns, "ss", "-tanpH"], capture_output=True, text=True
                ).stdout
                for line in out.splitlines():
                    f = line.split()
                    pid = re.search(r"pid=(\d+)", line)
                    if len(f) >= 5 and pid:
                        self.sockets.add((h, f[0], f[3], f[4], int(pid[1])))
                        self.names[int(pid[1])] = re.search(r'"([^"]*)"', line.split("users:", 1)[1])[1]
                for pid in self.c.pids(h):
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    except OSError:
                        continue
                    if "forge.cli launch" in cmd or "redis-server" in cmd:
                        self.extra_pids.add(pid)
            addresses = self.run_dir / "addresses.json"
            if self.unauthenticated is None and addresses.exists():
                gateway = json.loads(addresses.read_text())["gateway"]
                code = (
                    "import urllib.request, urllib.error\n"
                    f"try:\n    urllib.request.urlopen({gateway + '/v1/models'!r}, timeout=10); print(200)\n"
                    "except urllib.error.HTTPError as e:\n    print(e.code)\n"
                )
                self.unauthenticated = int(self.c.python("b", code).strip().splitlines()[-1])

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)

    def ray_internal(self, s: tuple[str, str, str, str, int]) -> bool:
        """A node-local connection to Ray's own per-node agent (every Ray worker process keeps one
        to its node's dashboard agent on 127.0.0.1, whatever it runs): Ray's plumbing, not Forge's."""
        host, state, _, peer, _ = s
        if state == "LISTEN":
            return False
        port = peer.rsplit(":", 1)[1]
        listeners = {
            self.names.get(p, "")
            for h, st, local, _, p in self.sockets
            if h == host and st == "LISTEN" and local.rsplit(":", 1)[1] == port
        }
        return bool(listeners) and all(n.startswith(RAY_SYSTEM) for n in listeners)

    def loopback_of(self, pids: set[int]) -> list[tuple[Any, ...]]:
        return sorted(
            (*s, self.names.get(s[4], ""))
            for s in self.sockets
            if s[4] in pids and (LOOPBACK.search(s[2]) or LOOPBACK.search(s[3])) and not self.ray_internal(s)
        )


def check_no_loopback(c: Cluster, run_dir: Path, watch: Watch, pids: set[int]) -> None:
    addresses = (run_dir / "addresses.json").read_text()
    assert not LOOPBACK.search(addresses), addresses
    seen = [s for s in watch.sockets if s[4] in pids]
    assert seen, "no socket of the run's components was seen"
    bad = watch.loopback_of(pids)
    internal = [s for s in seen if LOOPBACK.search(s[3]) and watch.ray_internal(s)]
    print(
        f"sockets of the run's components: {len(seen)}; to Ray's own node agent on loopback: {len(internal)}"
    )
    assert bad == [], f"a Forge component bound or dialled loopback: {bad}"


# ---------------------------------------------------------------------------------------------
def test_embedded_pool_off_loopback_binds_its_address_with_a_password(cluster, tmp_path):
    """Issue 19.4 at the data_pool level: bound to host A's address, the embedded redis-server
    requires a generated password (in its URL), and nothing listens on A's loopback."""
    code = (
        "import sys, time; from data_pool import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(tmp_path / 'redis')!r}, host={cluster.addr['a']!r}).start()\n"
        "print(s.url, flush=True); sys.stdin.read(); s.stop()\n"
    )
    server = cluster.popen(
        "a", [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        url = server.stdout.readline().strip()
        host_port = url.rsplit("@", 1)[1].rsplit("/", 1)[0]
        port = int(host_port.rsplit(":", 1)[1])
        assert url.startswith("redis://:") and host_port == f"{cluster.addr['a']}:{port}"
        probe = (
            "import redis\n"
            f"print(redis.Redis.from_url({url!r}).ping())\n"
            f"try:\n    redis.Redis(host={cluster.addr['a']!r}, port={port}).ping()\n"
            "except redis.AuthenticationError as e:\n    print('refused:', e)\n"
        )
        out = cluster.python("b", probe)
        assert out.startswith("True") and "refused:" in out, out
        local = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 2); print('open')\nexcept OSError:\n    print('closed')\n"
        assert cluster.python("a", local).strip() == "closed"
    finally:
        server.stdin.close()
        server.wait(timeout=60)


def test_placement_names_unknown_host_or_wrong_count(cluster, tmp_path):
    out = cluster.run("a", launch_argv(tmp_path / "r", cluster.redis_url, *THREE_HOSTS, "loop.env_workers=3"))
    assert (
        out.returncode != 0 and "placement.env_workers" in out.stderr and "loop.env_workers=3" in out.stderr
    )
    out = cluster.run(
        "a",
        launch_argv(
            tmp_path / "r", cluster.redis_url, "cluster=auto", "pool=external", "placement.gateway=host_x"
        ),
    )
    assert out.returncode != 0 and "placement.gateway" in out.stderr and "'host_x'" in out.stderr, out.stderr[
        -2000:
    ]


def test_ray_job_submit_trains_across_three_hosts(cluster, tmp_path):
    """Issue 19.3 through `ray job submit -- forge launch …`: engine on B serves each new weight
    version (sync crosses hosts), trainer ranks on A and C, workers on B and C, gateway on A (API key
    required), samples in Redis through its password, and no component touches loopback."""
    run_dir = tmp_path / "job"
    argv = launch_argv(run_dir, cluster.redis_url, *THREE_HOSTS, "loop.steps=3", "loop.checkpoint_every=2")
    argv += ["env.eval_prompts=0", "pool.key_prefix=job", "logger=none"]
    submit = ["ray", "job", "submit", f"--address=http://{cluster.addr['a']}:{DASHBOARD_PORT}", "--", *argv]
    watch = Watch(cluster, run_dir)
    watch.start()
    started = time.monotonic()
    try:
        out = cluster.run("a", submit, timeout=600)
    finally:
        watch.stop()
    print(f"ray job submit -- forge launch: {time.monotonic() - started:.0f}s")
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]

    metrics = rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    assert [r["sync/engine_weight_version"] for r in metrics] == [1, 2, 3]
    a, b, c = (cluster.addr[h] for h in "abc")
    addresses = json.loads((run_dir / "addresses.json").read_text())
    assert addresses["engines"][0].startswith(f"http://{b}:") and addresses["gateway"].startswith(
        f"http://{a}:"
    )
    assert addresses["redis"] == f"{a}:6380" and addresses["trainer_master"] == a
    placed = actor_nodes(cluster)
    assert placed["_EngineActor"] == [b] and placed["_GatewayActor"] == [a]
    assert placed["EnvWorkerActor"] == [b, c]
    assert set(placed["TrainerActor"]) == {a, c} and placed["TrainerActor"].count(c) == 1
    assert watch.unauthenticated == 401, "the gateway off loopback must require its API key"
    check_no_loopback(cluster, run_dir, watch, watch_pids(watch, cluster))

    trained = committed(run_dir)
    tasks = [t for s in sorted(trained) for t, _ in trained[s]["tasks"]]
    counts = pool_query(cluster, "job", "p.counts()")
    assert counts["completed"] == len(tasks) == 12 and counts["failed"] == 0
    stored = pool_query(cluster, "job", f"{{t: [s.session_id for s in p.samples(t)] for t in {tasks!r}}}")
    assert sorted(f"{s}/0" for v in stored.values() for s in v) == sorted(
        x for s in trained.values() for x in s["samples"]
    ), "each trained sample is in Redis"
    denied = "import redis\ntry:\n    redis.Redis(host=%r, port=6380).ping()\nexcept redis.AuthenticationError:\n    print('NOAUTH')\n"
    assert cluster.python("b", denied % a).strip() == "NOAUTH"


def watch_pids(watch: Watch, c: Cluster) -> set[int]:
    """The run's component pids among the sockets seen (their processes may be gone by now):
    Forge actors from Ray's state API plus the driver and redis-server found while watching."""
    out = c.run("a", ["ray", "list", "actors", "--detail", "--format", "json", "--limit", "1000"])
    return {int(a["pid"]) for a in json.loads(out.stdout) if a.get("pid")} | watch.extra_pids


def wait_for_lease(
    c: Cluster, prefix: str, worker_prefix: str, lease_s: float, fresh_s: float = 0.15, timeout_s: float = 120
) -> str:
    """Poll the pool (on host A) until a worker whose id starts with `worker_prefix` holds a lease
    taken within the last `fresh_s` (deadline − Redis's clock > lease_s − fresh_s: an episode that
    has barely started, so a kill now catches it in flight); returns the worker's leased task ids
    as JSON ("[]" after `timeout_s`)."""
    code = (
        "import json, time; from data_pool import PoolConfig, connect\n"
        f"p = connect(PoolConfig(redis_url={c.redis_url!r}, key_prefix={prefix!r}))\n"
        f"deadline = time.time() + {timeout_s}\n"
        "mine = []\n"
        "while time.time() < deadline:\n"
        "    sec, usec = p.client.time()\n"
        "    now_ms = sec * 1000 + usec / 1000\n"
        "    leases = [(i.decode(), d) for i, d in p.client.zrange(p.p + ':leases', 0, -1, withscores=True)]\n"
        f"    mine = [i for i, _ in leases if p.task_status(i).worker.startswith({worker_prefix!r})]\n"
        f"    fresh = [i for i, d in leases if i in mine and d - now_ms > {1000 * (lease_s - fresh_s)}]\n"
        "    if fresh:\n        break\n"
        "    time.sleep(0.005)\n"
        "print(json.dumps(mine), flush=True)\n"
    )
    poll = c.popen("a", [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = poll.stdout.readline()
    poll.wait(timeout=30)
    return line


def test_node_failure_stops_clearly_and_resume_continues(cluster, tmp_path):
    """Issue 19.5: SIGKILL every process of host C mid-run. The lost trainer rank stops the run
    with a clear error in bounded time; `resume=true` on A and B (world size 1) continues from the
    last checkpoint; C's in-flight tasks are retried on B; nothing acknowledged is lost and nothing
    is trained twice."""
    run_dir = tmp_path / "fail"
    prefix = "fail"
    first = launch_argv(run_dir, cluster.redis_url, *THREE_HOSTS, "loop.steps=40", "loop.checkpoint_every=2")
    first += [
        "env.eval_prompts=0",
        f"pool.key_prefix={prefix}",
        "pool.lease_timeout_s=6",
        "pool.max_in_flight=16",
    ]
    log = (tmp_path / "first.log").open("w")
    proc = cluster.popen("a", first, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while len(rows(run_dir / "metrics.jsonl")) < 3:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no 3 steps within 400 s"
        time.sleep(0.5)
    before = pool_query(cluster, prefix, "p.counts()")
    # kill the moment host C's worker takes a lease (episodes are short: a lease seen late is often
    # already finishing through the gateway on A, and then nothing is left to retry)
    on_c = json.loads(wait_for_lease(cluster, prefix, "env-worker-host_c-", lease_s=6))
    step_at_kill = len(rows(run_dir / "metrics.jsonl"))
    killed_at = time.monotonic()
    killed = cluster.kill_host("c")
    assert killed > 0 and cluster.pids("c") == []
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not stop within 240 s of losing host C")
    noticed_s = time.monotonic() - killed_at
    out = (tmp_path / "first.log").read_text()
    assert proc.returncode != 0
    assert "trainer rank 1 of 2 died" in out and "resume=true" in out, out[-4000:]
    after_stop = pool_query(cluster, prefix, "p.counts()")
    state = json.loads((run_dir / "state.json").read_text())
    checkpoint_step = state["step"]
    acked = [t for s in range(1, checkpoint_step + 1) for t, _ in committed(run_dir)[s]["tasks"]]
    assert checkpoint_step >= 2 and after_stop["completed"] == len(acked) == 4 * checkpoint_step
    cluster.wait_nodes(2, timeout=60)

    final = checkpoint_step + 8  # past the tasks C held (a window of 16 in flight)
    second = launch_argv(run_dir, cluster.redis_url, "cluster=auto", "pool=external", "resume=true")
    second += [
        f"loop.steps={final}",
        "loop.checkpoint_every=2",
        "env.eval_prompts=0",
        f"pool.key_prefix={prefix}",
    ]
    second += [
        "pool.lease_timeout_s=6",
        "pool.max_in_flight=16",
        "pool.retain_samples=true",
        "trainer.zero_stage=0",
    ]
    second += ["placement.trainer=[host_a]", "placement.env_workers=[host_b]", "placement.engines=[host_b]"]
    second += ["placement.gateway=host_a", "loop.trainer_world_size=1", "loop.env_workers=1"]
    resumed_wall = time.time()
    res = cluster.run("a", second, timeout=500)
    resume_s = time.time() - resumed_wall
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = rows(run_dir / "metrics.jsonl")
    first_new = next(r for r in metrics if r["step"] == checkpoint_step + 1 and r["time"] > resumed_wall)
    to_first_step_s = first_new["time"] - resumed_wall
    assert json.loads((run_dir / "state.json").read_text())["step"] == final

    trained = committed(run_dir)
    assert sorted(trained) == list(range(1, final + 1))
    tasks = [t for s in sorted(trained) for t, _ in trained[s]["tasks"]]
    samples = [x for s in trained.values() for x in s["samples"]]
    assert len(tasks) == len(set(tasks)) == 4 * final, "a task trained twice or a step short"
    assert len(samples) == len(set(samples))
    end = pool_query(cluster, prefix, "p.counts()")
    assert end["completed"] == len(tasks) and end["failed"] == 0
    status = pool_query(cluster, prefix, f"{{k: str(v) for k, v in p.statuses({acked!r}).items()}}")
    assert set(status.values()) == {"completed"}, "an acknowledged task lost its status"
    # C's in-flight tasks: their leases expired and B's worker ran them again
    after = pool_query(
        cluster,
        prefix,
        f"[[i, p.task_status(i).attempt, p.task_status(i).worker, p.task_status(i).status] for i in {on_c!r}]",
    )
    # each either finished on C before it died, or (lease expired) was run again by B's worker
    retried_on_b = [t for t, att, w, _ in after if att >= 1 and w.startswith("env-worker-host_b-")]
    finished_on_c = [t for t, att, w, _ in after if att == 0 and w.startswith("env-worker-host_c-")]
    assert retried_on_b and sorted(retried_on_b + finished_on_c) == sorted(on_c), after
    assert all(st == "completed" for *_, st in after), after
    assert set(retried_on_b) <= set(tasks), "a retried task was not trained"
    assert end["retries"] - before["retries"] >= len(retried_on_b)
    report = {
        "killed_processes": killed,
        "step_at_kill": step_at_kill,
        "checkpoint_step": checkpoint_step,
        "noticed_s": round(noticed_s, 1),
        "resume_total_s": round(resume_s, 1),
        "resume_to_first_step_s": round(to_first_step_s, 1),
        "counts_before_kill": before,
        "counts_after_stop": after_stop,
        "counts_after_resume": end,
        "in_flight_on_c": after,
    }
    print("node failure:", json.dumps(report))


def test_sweep_runs_every_job_on_the_cluster_with_embedded_pool(cluster, tmp_path):
    """Issue 19.6 (basic launcher: jobs in sequence) and 19.4 end to end: on a multi-node cluster
    the embedded Redis binds the head's address with a generated password, never loopback."""
    sweep = tmp_path / "sweep"
    argv = [*FORGE, "-m", *COMMON, "seed=0,1", "cluster=auto", "loop.steps=1", "env.eval_prompts=0"]
    argv += [f"hydra.sweep.dir={sweep}", "placement.engines=[host_b]", "placement.gateway=host_a"]
    out = cluster.run("a", argv, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    for job in ("0", "1"):
        run_dir = sweep / job
        assert [r["step"] for r in rows(run_dir / "metrics.jsonl")] == [1]
        addresses = json.loads((run_dir / "addresses.json").read_text())
        assert addresses["redis"].startswith(f"{cluster.addr['a']}:"), addresses
        assert not LOOPBACK.search(json.dumps(addresses))
        assert addresses["engines"][0].startswith(f"http://{cluster.addr['b']}:"), addresses
        # the job joined the cluster's Ray (its session lives under the cluster's temp dir)
        assert (run_dir / "ray_session").read_text().startswith(str(cluster.root)), "a local Ray was started"
        auth = run_dir / "redis" / "redis-auth.conf"
        assert auth.stat().st_mode & 0o777 == 0o600 and "requirepass" in auth.read_text()
