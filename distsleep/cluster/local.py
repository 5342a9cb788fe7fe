"""A multi-node Ray cluster on one machine, plus an MLflow tracking server: for trying the cluster path
on a laptop and for the multi-node tests.

    python -m distsleep.cluster.local start --workers 1 --state-dir .cluster   (cluster/local/start.sh)
    python -m distsleep.cluster.local stop --state-dir .cluster                (cluster/local/stop.sh)
    eval "$(python -m distsleep.cluster.local env --state-dir .cluster)"       (the variables jobs need)

`start` runs `ray start --head` and N `ray start --address` worker nodes, each with its own CPU count and
a node resource (`node_head`, `node_worker1`, ...) so that jobs and tests can place work on a given node,
and an MLflow server (SQLite backend and artifact root under the state dir, or `--artifacts-destination`).

`--object-store` also starts an S3-compatible server (moto, `objectstore.py`) beside MLflow, before the
nodes, with a bucket `distsleep`: every node, job and the MLflow server get AWS_ENDPOINT_URL and the AWS
config files of STATE (a random key pair, mode 0600) in their environment, so `--out s3://distsleep/...`,
`--shards s3://...` and `--storage-path s3://...` work on it, and MLflow puts its artifacts in
s3://distsleep/mlflow (unless `--artifacts-destination` says otherwise). `env` prints the variables
(file paths, never the key).

Security. Ray's token authentication is on: `start` writes a random token to STATE/auth_token (mode 0600)
and every node, job driver and client reads it through RAY_AUTH_TOKEN_PATH (`env` prints it); a client
without it is refused by the GCS, the raylets, the dashboard/job API and the Ray client server. Without
`--netns`, every node keeps the address 127.0.0.1 (`ray_start.py`), so Ray's GCS, raylets, agents, client
server and dashboard listen on 127.0.0.1 only. With `--netns` (root, `ip netns`), each worker node runs in
its own network namespace with its own address, attached by a veth pair to a bridge on the host (as
containers are), so object transfers and gloo collectives really cross a network; the head then listens
on the bridge address and, for the servers Ray binds to every interface when the node address is not
loopback (GCS, raylet, agents), on the host's other interfaces too: the token is what protects them. The
MLflow server listens on 127.0.0.1 (with namespaces: the bridge address) and accepts only Host headers
naming that address (DNS-rebinding protection); it has no authentication of its own.

The state dir records what was started (cluster.json, written atomically): every `ray start` runs in its
own process group, and `stop` signals every process of those groups, of the MLflow server's group, every
descendant of them (job drivers start their own sessions) and every process naming the cluster's temp dir,
escalates to SIGKILL after a grace period (Ray's agents ignore SIGTERM), and removes only the namespaces
it created. Other Ray clusters on the machine are left alone (`ray stop` would kill them all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distsleep.atomic import write_json_atomic
from distsleep.cluster.host import free_port, venv_executable
from distsleep.cluster.mlflow_server import start_mlflow_server
from distsleep.cluster.objectstore import client_env, create_bucket, start_s3_server, write_aws_files
from distsleep.runtime import LOOPBACK_SWITCH

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
TEMP_DIR = re.compile(r"/tmp/dsc-[0-9a-f]{8,}")  # the temp dirs `start` names (short: Ray's socket paths)
STOP_GRACE_S = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass
class Node:
    name: str  # head, worker1, ...
    ip: str
    cpus: float
    netns: str | None = None


@dataclass
class LocalCluster:
    state_dir: str
    ray_address: str  # GCS host:port, for ray.init(address=...) and `ray start --address`
    dashboard_url: str  # for `ray job submit --address`
    mlflow_uri: str | None
    temp_dir: str
    token_path: str = ""  # Ray auth token file of this cluster (RAY_AUTH_TOKEN_PATH)
    loopback: bool = True  # every node on 127.0.0.1 (no network namespaces)
    nodes: list[Node] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # processes started directly (MLflow server)
    pgids: list[int] = field(default_factory=list)  # process groups of the `ray start` commands and MLflow
    netns: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    object_store: dict[str, str] = field(default_factory=dict)  # client variables of the S3 server (objectstore.client_env)

    def save(self) -> None:
        write_json_atomic(Path(self.state_dir) / STATE_FILE, asdict(self))

    @classmethod
    def load(cls, state_dir: str | Path) -> LocalCluster:
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            raise RuntimeError(f"{path}: no cluster was started from {Path(state_dir).resolve()} (start one with "
                               f"cluster/local/start.sh --state-dir {state_dir})")
        data = json.loads(path.read_text())
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        # `stop` signals every process naming the temp dir and deletes it: only a dir `start` makes will do.
        if not TEMP_DIR.fullmatch(str(data.get("temp_dir", ""))):
            raise RuntimeError(f"{path}: temp_dir {data.get('temp_dir')!r} is not a cluster temp dir (/tmp/dsc-<hex>) "
                               "that `start` writes; refusing to use this state file")
        # Its object-store variables go into the environment of what the cluster commands start and into the
        # `env` lines users eval: only the variables `start` writes (a key such as LD_PRELOAD or `X; cmd` would run code).
        unknown = sorted(set(data.get("object_store") or {}) - set(client_env("", "", "")))
        if unknown:
            raise RuntimeError(f"{path}: object_store holds variables `start` never writes ({', '.join(map(repr, unknown))}); "
                               "refusing to use this state file")
        return cls(**data)

    def env(self) -> dict[str, str]:
        """Environment for jobs and clients of this cluster (addresses and its auth token)."""
        out = {"RAY_ADDRESS": self.ray_address, "RAY_DASHBOARD_ADDRESS": self.dashboard_url,
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}
        if self.loopback:
            out[LOOPBACK_SWITCH] = "0"  # a driver started with RAY_ADDRESS=127.0.0.1:... must not rewrite it
        if self.mlflow_uri:
            out["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        return out | self.object_store

    def process_env(self) -> dict[str, str]:
        """This process's environment for commands talking to the cluster (its ray/python first on PATH)."""
        return _env(self.token_path, self.loopback, self.object_store) | self.env()

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers that authenticate to the dashboard/job API of this cluster."""
        return {"Authorization": f"Bearer {Path(self.token_path).read_text().strip()}"}


def _node_ports(host: str) -> list[str]:
    """Ports Ray would otherwise take at fixed defaults (e.g. the job agent's 52365): two nodes on one host,
    or a leftover process of another cluster, would collide on them."""
    return [f"--dashboard-agent-listen-port={free_port(host)}", f"--dashboard-agent-grpc-port={free_port(host)}",
            f"--metrics-export-port={free_port(host)}", f"--runtime-env-agent-port={free_port(host)}"]


# Credentials a caller's environment may carry, which would take precedence over the cluster's own AWS files.
_AWS_OVERRIDES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _env(token_path: str, loopback: bool, object_store: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the cluster's processes. Raylets start job drivers and workers with their own
    environment: this venv first on PATH (so `ray job submit -- python jobs/...` runs with the installed
    stack), token auth on with this cluster's token, (loopback) Ray's one-machine switch, and with an object
    store its endpoint and AWS files (instead of any credentials of the caller's environment)."""
    env = dict(os.environ)
    if object_store:
        for key in _AWS_OVERRIDES:
            env.pop(key, None)
        env.update(object_store)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = token_path
    env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("RAY_ADDRESS", None)
    if loopback:
        env[LOOPBACK_SWITCH] = "0"
    else:
        env.pop(LOOPBACK_SWITCH, None)
    return env


def _ray_start(cluster: LocalCluster, args: list[str], netns: str | None = None, gloo_if: str = "lo") -> None:
    """`ray start ARGS` in a process group of its own (recorded before it runs, so `stop` finds its daemons)."""
    command = [sys.executable, "-m", "distsleep.cluster.ray_start"] if cluster.loopback else [venv_executable("ray")]
    # gloo picks its interface from the host name (127.0.0.1 here), which peers in other namespaces cannot
    # reach: pin it to the node's interface.
    command = ["env", f"GLOO_SOCKET_IFNAME={gloo_if}", *command, "start", *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(cluster.token_path, cluster.loopback, cluster.object_store), start_new_session=True)
    cluster.pgids.append(process.pid)
    cluster.save()
    output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args[:2])} failed (exit {process.returncode}): {output[-2000:]}")


def write_token(path: Path) -> str:
    """A new random Ray auth token in `path`, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(secrets.token_hex(32))
    return str(path)


def netns_available() -> bool:
    """Root and a working `ip netns` (creating one is the only reliable test)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"dsprobe{os.getpid() % 100000}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError):
        return False
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True


def _subnet_base(state_dir: Path) -> int:
    # A /24 per cluster in 10.200-249.x.0, derived from the state dir so that two clusters on one
    # machine do not collide.
    digest = int(hashlib.sha256(str(state_dir).encode()).hexdigest()[:8], 16)
    return digest


def _setup_network(tag: str, digest: int, workers: int) -> tuple[str, str, list[tuple[str, str, str, str]]]:
    """A bridge on the host and one namespace per worker node attached to it, like containers on a host.

    Returns (bridge, host ip, [(netns, host veth, node interface, node ip)]). The bridge carries traffic
    between namespaces at layer 2 (no IP forwarding needed on the host); the host reaches every node
    through the bridge address, and nodes reach the host (the head) through it too.
    """
    second, third = 200 + digest % 50, (digest >> 8) % 250
    bridge, host_ip = f"dsbr{tag}", f"10.{second}.{third}.1"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    for args in (["ip", "link", "add", bridge, "type", "bridge"], ["ip", "addr", "add", f"{host_ip}/24", "dev", bridge],
                 ["ip", "link", "set", bridge, "up"]):
        subprocess.run(args, check=True, capture_output=True)
    links = []
    for index in range(1, workers + 1):
        netns, host_if, node_if = f"ds{tag}w{index}", f"ds{tag}h{index}", f"ds{tag}n{index}"
        node_ip = f"10.{second}.{third}.{index + 1}"
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        for args in (["ip", "netns", "add", netns],
                     ["ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if],
                     ["ip", "link", "set", node_if, "netns", netns],
                     ["ip", "link", "set", host_if, "master", bridge],
                     ["ip", "link", "set", host_if, "up"],
                     ["ip", "netns", "exec", netns, "ip", "addr", "add", f"{node_ip}/24", "dev", node_if],
                     ["ip", "netns", "exec", netns, "ip", "link", "set", node_if, "up"],
                     ["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"],
                     ["ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", host_ip]):
            subprocess.run(args, check=True, capture_output=True)
        links.append((netns, host_if, node_if, node_ip))
    return bridge, host_ip, links


BUCKET = "distsleep"  # the bucket of the cluster's object store


def _start_object_store(cluster: LocalCluster, host: str) -> None:
    """The S3 server (its process group recorded for `stop`), the AWS files in the state dir, and the bucket."""
    state = Path(cluster.state_dir)
    credentials, config = write_aws_files(state)
    server = start_s3_server(log=state / "s3-server.log", host=host,
                             env={**_env(cluster.token_path, cluster.loopback)})
    cluster.pids.append(server.pid)
    cluster.pgids.append(server.pid)
    cluster.object_store = client_env(server.endpoint, credentials, config)
    cluster.save()
    create_bucket(BUCKET, env=_env(cluster.token_path, cluster.loopback, cluster.object_store))


def _start_mlflow(cluster: LocalCluster, host: str, artifacts_destination: str | None) -> None:
    """The MLflow server: SQLite store in the state dir, artifacts there too, in the cluster's bucket (with an
    object store) or at `artifacts_destination`; clients upload and download them through the server."""
    state = Path(cluster.state_dir)
    store = state / "mlflow"
    store.mkdir(exist_ok=True)
    destination = artifacts_destination or (f"s3://{BUCKET}/mlflow" if cluster.object_store else str(store / "artifacts"))
    server = start_mlflow_server(store / "mlflow.db", destination, host=host, log=state / "mlflow-server.log",
                                 env=_env(cluster.token_path, cluster.loopback, cluster.object_store), timeout=90)
    cluster.pids.append(server.process.pid)
    cluster.pgids.append(server.process.pid)
    cluster.mlflow_uri = server.uri
    cluster.save()


def claim_temp_dir(path: str) -> None:
    """Make sure the cluster's temp dir is a real folder of this user before Ray uses it. Its name is predictable
    (/tmp/dsc-<hash of the state dir>), so another user of the machine could have made it first, or a symlink
    under that name, to read the cluster's sockets and logs or to have Ray write where they point: a path that
    exists and is not a real folder of this user is refused, naming it. (Ray then opens the folder's mode to
    0777 itself, as for /tmp/ray, so that several users may share a temp dir; the folder is still ours.)"""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a folder" if not stat.S_ISDIR(info.st_mode) \
            else f"a folder of another user (uid {info.st_uid})"
        raise RuntimeError(f"{path}: the cluster's temp dir already exists and is {what}; remove it, or start the "
                           "cluster from another --state-dir")


def whole_cpus(value: float, option: str) -> int:
    """A node's CPU count as `ray start --num-cpus` takes it: a whole number, at least 1 (else ValueError)."""
    if float(value) != int(value) or int(value) < 1:
        raise ValueError(f"{option} {value:g}: a node has a whole number of CPUs, at least 1 (ray start --num-cpus); "
                         "give a job's workers fractions with its --cpus-per-worker instead")
    return int(value)


def start(state_dir: str | Path, workers: int = 1, head_cpus: int = 1, worker_cpus: int = 1,
          mlflow: bool = True, netns: bool = False, object_store_mb: int = 256,
          token_path: str | Path | None = None, object_store: bool = False,
          artifacts_destination: str | None = None) -> LocalCluster:
    """Start the cluster; `token_path` is an existing token file to use (default: a new one in the state dir).
    `object_store` starts the S3 server beside MLflow (module docstring); `artifacts_destination` is where
    MLflow keeps artifacts (default: the cluster's bucket with an object store, else the state dir)."""
    head_cpus, worker_cpus = whole_cpus(head_cpus, "--head-cpus"), whole_cpus(worker_cpus, "--worker-cpus")
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        raise RuntimeError(f"{state / STATE_FILE} exists: a cluster was started from this state dir; "
                           f"stop it first (cluster/local/stop.sh --state-dir {state})")
    digest = _subnet_base(state)
    tag = f"{digest % 4096:03x}"
    # Short temp dir: Ray's unix socket paths under it must stay below the 107-character limit.
    temp_dir = f"/tmp/dsc-{digest:08x}"  # TEMP_DIR
    claim_temp_dir(temp_dir)
    token = str(Path(token_path).resolve()) if token_path else write_token(state / TOKEN_FILE)
    cluster = LocalCluster(state_dir=str(state), ray_address="", dashboard_url="", mlflow_uri=None, temp_dir=temp_dir,
                           token_path=token, loopback=not netns)
    cluster.save()  # from here on, stop() can clean up whatever was started
    try:
        links = []
        head_ip, head_if = "127.0.0.1", "lo"
        if netns:
            # Recorded before creation so that stop() removes whatever part of it exists.
            cluster.bridges.append(f"dsbr{tag}")
            cluster.netns.extend(f"ds{tag}w{i}" for i in range(1, workers + 1))
            cluster.veths.extend(f"ds{tag}h{i}" for i in range(1, workers + 1))
            cluster.save()
            head_if, head_ip, links = _setup_network(tag, digest, workers)
        if object_store:  # before the nodes: their processes inherit its variables
            _start_object_store(cluster, head_ip)
        port, dashboard_port, client_port = free_port(), free_port(), free_port(head_ip)
        common = ["--num-gpus=0", f"--temp-dir={temp_dir}", f"--object-store-memory={object_store_mb * 2**20}",
                  "--disable-usage-stats"]
        _ray_start(cluster, ["--head", f"--node-ip-address={head_ip}", f"--port={port}", f"--num-cpus={head_cpus}",
                             f"--resources={json.dumps({'node_head': 1})}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                             f"--ray-client-server-port={client_port}", *common, *_node_ports("127.0.0.1")],
                   gloo_if=head_if)
        cluster.ray_address = f"{head_ip}:{port}"
        cluster.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        cluster.nodes.append(Node("head", head_ip, head_cpus))
        cluster.save()
        for i in range(1, workers + 1):
            ns, node_if, node_ip = (links[i - 1][0], links[i - 1][2], links[i - 1][3]) if links else (None, "lo", "127.0.0.1")
            _ray_start(cluster, [f"--address={cluster.ray_address}", f"--node-ip-address={node_ip}",
                                 f"--num-cpus={worker_cpus}", f"--resources={json.dumps({f'node_worker{i}': 1})}", *common,
                                 # The nodes share one session folder on this host: the head's log monitor already
                                 # streams every worker's output to the drivers, and a monitor per node would
                                 # print each line once per node.
                                 "--include-log-monitor=false", *_node_ports("127.0.0.1")],
                       netns=ns, gloo_if=node_if)
            cluster.nodes.append(Node(f"worker{i}", node_ip, worker_cpus, ns))
            cluster.save()
        if mlflow:
            _start_mlflow(cluster, head_ip, artifacts_destination)
        _wait_nodes(cluster, timeout=60)
        _wait_job_agent(cluster, timeout=90)
    except Exception:
        stop(state)
        raise
    return cluster


def _wait_nodes(cluster: LocalCluster, timeout: float) -> None:
    deadline = time.time() + timeout
    script = ("import ray, json; ray.init(address=%r, logging_level='ERROR'); "
              "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % cluster.ray_address)
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cluster.process_env())
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(len(cluster.nodes))]:
            return
        time.sleep(1)
    raise RuntimeError(f"only some of the {len(cluster.nodes)} nodes joined {cluster.ray_address}")


def _wait_job_agent(cluster: LocalCluster, timeout: float) -> None:
    """Until the head accepts jobs: its job agent registers some seconds after `ray start` returns, and a
    submission before that fails with 'No available agent'. A no-op job proves the whole path works."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers())
            job = client.submit_job(entrypoint="true")
            while time.time() < deadline:
                status = client.get_job_status(job)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    if status == JobStatus.SUCCEEDED:
                        return
                    raise RuntimeError(f"a no-op job ended {status}")
                time.sleep(0.5)
        except RuntimeError as error:
            last = error
            time.sleep(1)
    raise RuntimeError(f"the cluster at {cluster.dashboard_url} accepts no jobs ({last})")


def _processes_of(temp_dir: str) -> list[int]:
    """Pids of the Ray processes of this cluster whose command lines name its temp/session dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            pids.append(int(entry.name))
    return pids


def cluster_processes(cluster: LocalCluster) -> list:
    """Every live process of the cluster (psutil.Process): the members of its recorded process groups, the
    processes naming its temp dir, the recorded pids, and all their descendants. Ray's agents rename their
    process titles (`ray::DashboardAgent`), so the groups and the process tree find what names miss."""
    import psutil

    groups = set(cluster.pgids)
    roots: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getpgid(process.pid) in groups:
                roots[process.pid] = process
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    for pid in [*_processes_of(cluster.temp_dir), *cluster.pids]:
        try:
            roots.setdefault(pid, psutil.Process(pid))
        except psutil.Error:
            continue
    found = dict(roots)
    for process in roots.values():
        try:
            found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop_worker_node(cluster: LocalCluster, name: str) -> None:
    """Kill one worker node's Ray processes (a node failure, for fault tests and drills)."""
    node = next(n for n in cluster.nodes if n.name == name)
    if node.netns:
        pids = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout.split()
    else:
        pids = [str(p) for p in _raylet_tree(cluster, f"node_worker{name.removeprefix('worker')}")]
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _raylet_tree(cluster: LocalCluster, resource: str) -> list[int]:
    """The raylet carrying `resource` and every process below it (its workers)."""
    import psutil

    for pid in _processes_of(cluster.temp_dir):
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "raylet" in process.name() and resource in cmdline:
            return [pid, *(c.pid for c in process.children(recursive=True))]
    return []


def _signal_all(processes: list, sig: int) -> None:
    import psutil

    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def stop(state_dir: str | Path, grace: float = STOP_GRACE_S) -> None:
    """Stop what `start` started from this state dir (idempotent): SIGTERM to every process of the cluster,
    SIGKILL to whatever is left after `grace` seconds, until none remains."""
    import psutil

    state = Path(state_dir).resolve()
    if not (state / STATE_FILE).exists():
        return
    cluster = LocalCluster.load(state)
    targets = cluster_processes(cluster)  # the whole tree first: job drivers lose their parent on the way down
    _signal_all(targets, signal.SIGTERM)
    _, alive = psutil.wait_procs(targets, timeout=grace)
    for _ in range(5):  # processes started while shutting down (a raylet restarting a worker) get caught too
        alive = [p for p in {p.pid: p for p in [*alive, *cluster_processes(cluster)]}.values() if p.is_running()]
        if not alive:
            break
        _signal_all(alive, signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=grace)
    if alive:
        raise RuntimeError(f"processes of the cluster in {state} survived SIGKILL: {sorted(p.pid for p in alive)}")
    for ns in cluster.netns:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for veth in cluster.veths:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    for bridge in cluster.bridges:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    (state / STATE_FILE).unlink()


def _format(cluster: LocalCluster) -> str:
    lines = [f"Ray cluster: {len(cluster.nodes)} nodes"]
    lines += [f"  {n.name:8s} {n.ip:15s} {n.cpus:g} CPU  resource node_{n.name}" + (f"  netns {n.netns}" if n.netns else "")
              for n in cluster.nodes]
    if cluster.object_store:
        lines += [f"object store: {cluster.object_store['AWS_ENDPOINT_URL']} (S3, bucket s3://{BUCKET}; credentials in "
                  f"{cluster.object_store['AWS_SHARED_CREDENTIALS_FILE']})"]
    if cluster.mlflow_uri:
        lines += [f"MLflow: {cluster.mlflow_uri}"]
    lines += ["", f"auth token: {cluster.token_path} (clients need RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path})",
              f"environment: eval \"$(python -m distsleep.cluster.local env --state-dir {cluster.state_dir})\"",
              f"ray job submit --address {cluster.dashboard_url} --working-dir . -- python jobs/pretrain.py ...",
              f"stop: cluster/local/stop.sh --state-dir {cluster.state_dir}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distsleep.cluster.local",
                                     description="Start or stop a multi-node Ray cluster (+ MLflow server) on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start a head, N worker nodes and an MLflow server")
    p.add_argument("--state-dir", default=".cluster", help="where the cluster's state, MLflow store and logs live")
    p.add_argument("--workers", type=int, default=1, help="worker nodes (default 1)")
    p.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head node (default 1)")
    p.add_argument("--worker-cpus", type=int, default=1, help="CPUs of each worker node (default 1)")
    p.add_argument("--no-mlflow", action="store_true", help="no MLflow server")
    p.add_argument("--netns", choices=("auto", "yes", "no"), default="no",
                   help="worker nodes in their own network namespaces (needs root and `ip netns`; auto: when possible)")
    p.add_argument("--object-store", action="store_true",
                   help=f"also start an S3-compatible server (moto, a test dependency) with a bucket {BUCKET!r}; nodes, "
                        f"jobs and MLflow get its endpoint and credentials files; MLflow artifacts go to s3://{BUCKET}/mlflow")
    p.add_argument("--artifacts-destination", metavar="URI",
                   help="where the MLflow server keeps artifacts (e.g. s3://bucket/mlflow; default: the state dir, or "
                        "the object store's bucket with --object-store)")
    p = sub.add_parser("stop", help="stop the cluster started from --state-dir")
    p.add_argument("--state-dir", default=".cluster")
    p = sub.add_parser("env", help="print the environment variables of a running cluster")
    p.add_argument("--state-dir", default=".cluster")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (RuntimeError, ValueError) as error:  # what went wrong and what to do, without a traceback
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "start":
        use_netns = args.netns == "yes" or (args.netns == "auto" and netns_available())
        cluster = start(args.state_dir, workers=args.workers, head_cpus=args.head_cpus, worker_cpus=args.worker_cpus,
                        mlflow=not args.no_mlflow, netns=use_netns, object_store=args.object_store,
                        artifacts_destination=args.artifacts_destination)
        print(_format(cluster))
    elif args.command == "stop":
        stop(args.state_dir)
        print(f"stopped the cluster of {Path(args.state_dir).resolve()}")
    else:
        for key, value in LocalCluster.load(args.state_dir).env().items():  # users eval this: quote every value
            print(f"export {key}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
