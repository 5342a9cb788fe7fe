"""The cluster path end to end: a real multi-node Ray cluster on this machine (worker nodes in their own
network namespaces when the machine allows it), an MLflow server, and jobs submitted with `ray job submit`.
Every cluster runs with Ray token authentication (the test session's token, see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from distsleep.cluster import local
from distsleep.synth.cohort import CohortConfig, generate_cohort
from tests.test_train import _wait_for_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def submit(cluster: local.LocalCluster, *args: str, timeout: float = 900, wait: bool = True,
           working_dir: Path = REPO) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> -- python ...`; env for the job comes in the runtime env."""
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": cluster.mlflow_uri, "OMP_NUM_THREADS": "1"}}
    command = [RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(working_dir),
               "--runtime-env-json", json.dumps(runtime_env)]
    if not wait:
        command.append("--no-wait")
    command += ["--", "python", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=cluster.process_env())


def job_logs(cluster: local.LocalCluster, job_id: str) -> str:
    return subprocess.run([RAY, "job", "logs", "--address", cluster.dashboard_url, job_id], capture_output=True,
                          text=True, env=cluster.process_env()).stdout


def start_cluster(state: Path, **options) -> local.LocalCluster:
    """A local cluster with the session's token, so this process's Ray clients (job, state APIs) reach it."""
    return local.start(state, token_path=os.environ["RAY_AUTH_TOKEN_PATH"], **options)


def wait_job(cluster: local.LocalCluster, job_id: str, timeout: float = 900) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        for state in ("SUCCEEDED", "FAILED", "STOPPED"):
            if state in status:
                return state
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def train_worker_nodes(cluster: local.LocalCluster) -> set[str]:
    """Node ids of every RayTrainWorker actor the cluster has seen (alive or dead)."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")], limit=1000,
                         detail=True, raise_on_missing_output=False)
    return {a.node_id for a in actors}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster-cohort")
    generate_cohort(root, CohortConfig(n_records=8, hours=1.5, seed=21, workers=2), progress=False)
    return root


@pytest.fixture(scope="module")
def shards(training_shards) -> Path:
    """Shards preprocessed on the test session's own Ray cluster (for the tests that are not about preprocessing)."""
    return training_shards


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster-state")
    cluster = start_cluster(state, workers=1, head_cpus=1, worker_cpus=1, netns=local.netns_available())
    try:
        yield cluster
    finally:
        local.stop(state)


def test_jobs_submitted_to_a_two_node_cluster(two_nodes, cohort, tmp_path):
    cluster = two_nodes
    shards, runs = tmp_path / "shards", tmp_path / "runs"

    # 1. preprocessing: one Ray task per recording, spread over both nodes
    result = submit(cluster, "jobs/preprocess.py", "--root", str(cohort), "--out", str(shards), "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert len(manifest["records"]) == 8 and all((shards / r["shard"]).exists() for r in manifest["records"].values())

    # 2. pre-training: 2 Ray Train workers of 1 CPU each, so one per node
    common = ["--shards", str(shards / "manifest.json"), "--model-size", "small", "--seq-len", "5", "--batch-size", "32",
              "--loader-workers", "1", "--num-workers", "2", "--storage-path", str(runs), "--experiment", "cluster"]
    result = submit(cluster, "jobs/pretrain.py", *common, "--max-steps", "20", "--val-every", "10", "--name", "pre")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(train_worker_nodes(cluster)) == 2, "the two workers ran on different nodes"
    # The console: rank 0's lines once each (one log monitor for the nodes sharing this host's session folder), and
    # none of MLflow's "View run ... at" links.
    assert result.stdout.count("] step 10: val acc") == 1, result.stdout[-3000:]
    assert "View run" not in result.stdout and "View experiment" not in result.stdout, result.stdout[-3000:]
    assert sorted(runs.glob("pre/checkpoint_*/trainer_state.json"))

    # 3. a 2-trial sweep; half a CPU per worker, so both trials run at once and log to the server concurrently
    result = submit(cluster, "jobs/sweep.py", *common, "--max-steps", "30", "--val-every", "30", "--no-finetune",
                    "--cpus-per-worker", "0.5", "--mask-ratios", "0.25", "0.5", "--name", "sweep2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 trials completed" in result.stdout
    assert "View run" not in result.stdout, result.stdout[-3000:]

    client = mlflow.MlflowClient(cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("cluster")
    runs_logged = client.search_runs([experiment.experiment_id], max_results=100)
    pre = [r for r in runs_logged if r.info.run_name == "pre"]
    assert len(pre) == 1 and pre[0].info.status == "FINISHED" and "test_accuracy" in pre[0].data.metrics
    assert pre[0].data.params["world_size"] == "2"
    trials = [r for r in runs_logged if r.data.tags.get("distsleep.kind") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert all("test_accuracy" in r.data.metrics for r in trials)
    # Both trials were inside their training runs at the same time (Tune ran them concurrently), so both
    # wrote to the server at once; every step of each run arrived.
    spans = []
    for trial in trials:
        stage = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")[0]
        assert sorted(m.step for m in client.get_metric_history(stage.info.run_id, "loss")) == list(range(1, 31))
        spans.append((stage.info.start_time, stage.info.end_time))
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"the trials ran one after the other: {spans}"
    # artifacts went to the server's artifact store, not to a worker's disk
    assert any(a.path == "model" for a in client.list_artifacts(pre[0].info.run_id))


def test_paths_other_nodes_cannot_use_are_refused_before_launch(two_nodes, shards, tmp_path):
    # /proc exists on every node but nobody may write there: each node's answer is reported. Submitted
    # through `distsleep submit`, which carries MLFLOW_TRACKING_URI from this environment to the job.
    result = subprocess.run(
        [sys.executable, "-m", "distsleep.cli", "submit", "--address", two_nodes.dashboard_url, "--working-dir", str(REPO),
         "--", "python", "jobs/pretrain.py", "--shards", str(shards), "--storage-path", "/proc/distsleep-runs",
         "--num-workers", "2", "--loader-workers", "1"],
        capture_output=True, text=True, timeout=600, env=two_nodes.process_env())
    assert result.returncode != 0
    output = result.stdout + result.stderr
    nodes = re.findall(r"the storage path /proc/distsleep-runs is not writable \([^)]*\) on node (\d+\.\d+\.\d+\.\d+)", output)
    assert set(nodes) == {n.ip for n in two_nodes.nodes}, output[-2000:]
    assert "shared filesystem" in output and "Traceback" not in output


# A job run on the two-node cluster: the same all-reduce with Ray's default rendezvous and with ours, one
# worker per node (1 CPU each); every worker lists the addresses its own process listens on, and which of
# them is Ray's own worker server (bound to every interface on a node whose address is not 127.0.0.1, and
# guarded by the cluster's token: README, Security).
LISTENING_JOB = """
import json, sys
from pathlib import Path

from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from distsleep.train.rendezvous import LocalRendezvousConfig


def record(config):
    import psutil, ray, ray.train, torch, torch.distributed as dist
    from ray.core.generated.common_pb2 import Address
    from distsleep.train import rendezvous

    total = torch.ones(1)
    dist.all_reduce(total)
    rank = ray.train.get_context().get_world_rank()
    listening = sorted({tuple(c.laddr) for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN})
    server = getattr(rendezvous, "_store_server", None)  # our store's server, in rank 0's process (None elsewhere and for Ray's)
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps({
        "sum": total.item(), "node": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(), "listening": listening,
        "ray_port": Address.FromString(ray._private.worker.global_worker.core_worker.get_owner_address(ray.put(0))).port,
        "store": [server.host, server.port] if server is not None else None}))


out = Path(sys.argv[1])
for name, torch_config in (("default", TorchConfig(backend="gloo")), ("ours", LocalRendezvousConfig(backend="gloo"))):
    (out / name).mkdir(parents=True)
    TorchTrainer(record, train_loop_config={"out": str(out / name)}, torch_config=torch_config,
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=str(out / "runs"), name=name)).fit()
"""


def test_workers_on_two_nodes_rendezvous_on_the_cluster_network_only(two_nodes, tmp_path):
    job, out = tmp_path / "job", tmp_path / "out"
    job.mkdir()
    (job / "listening.py").write_text(LISTENING_JOB)
    result = submit(two_nodes, "listening.py", str(out), working_dir=job, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = {name: [json.loads((out / name / f"rank{rank}.json").read_text()) for rank in range(2)]
            for name in ("default", "ours")}
    def beyond_ray_server(worker: dict) -> set[str]:  # the addresses listened on, but for Ray's own worker server
        return {ip for ip, port in worker["listening"] if port != worker["ray_port"]}

    # Ray's default: rank 0 hosts torch's TCPStore on every interface (what distsleep replaces)
    assert {"0.0.0.0", "::"} & beyond_ray_server(seen["default"][0]), seen["default"]
    ours = seen["ours"]
    assert len({worker["node"] for worker in ours}) == 2, "one worker per node"
    assert {worker["node_ip"] for worker in ours} <= {node.ip for node in two_nodes.nodes}
    for rank, worker in enumerate(ours):
        assert worker["sum"] == 2.0, worker
        allowed = {worker["node_ip"], "127.0.0.1", "::ffff:127.0.0.1", "::1"}
        assert beyond_ray_server(worker) and beyond_ray_server(worker) <= allowed, (rank, worker)
    store = ours[0]["store"]
    assert store and store[0] == ours[0]["node_ip"] and store in ours[0]["listening"], ours[0]
    assert ours[1]["store"] is None


def _job_id(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"raysubmit_[A-Za-z0-9]+", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return match.group(0)


def _node_names(cluster: local.LocalCluster) -> dict[str, str]:
    """node id -> our node name (head, worker1, ...), from the node resources."""
    from ray.util.state import list_nodes

    names = {}
    for node in list_nodes(address=cluster.dashboard_url, detail=True, limit=100):
        for key in node.resources_total:
            if key.startswith("node_") and not key.startswith("node:"):
                names[node.node_id] = key.removeprefix("node_")
    return names


def _kill_a_training_node(cluster: local.LocalCluster, storage: Path) -> str:
    from ray.util.state import list_actors

    _wait_for_checkpoint(storage, timeout=300)
    names = _node_names(cluster)
    actors = list_actors(address=cluster.dashboard_url, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         detail=True, limit=100)
    victims = sorted({names[a.node_id] for a in actors if names.get(a.node_id, "head") != "head"})
    assert victims, "no training worker on a worker node"
    local.stop_worker_node(cluster, victims[0])
    return victims[0]


def test_losing_a_worker_node_during_pretraining(shards, tmp_path, ray_local):
    import ray

    cluster = start_cluster(tmp_path / "state", workers=2, head_cpus=1, worker_cpus=1, netns=local.netns_available())
    try:
        assert [n.name for n in cluster.nodes] == ["head", "worker1", "worker2"]
        assert cluster.dashboard_url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="stop it first"):
            start_cluster(tmp_path / "state")
        common = ["jobs/pretrain.py", "--shards", str(shards), "--model-size", "small", "--seq-len", "5", "--batch-size", "32",
                  "--loader-workers", "1", "--num-workers", "2", "--max-steps", "60", "--val-every", "20",
                  "--storage-path", str(tmp_path / "runs"), "--experiment", "faults"]
        # With --max-failures 1 and a spare node, the run restarts from its checkpoint and finishes.
        job = _job_id(submit(cluster, *common, "--name", "resumes", "--max-failures", "1", wait=False))
        lost = _kill_a_training_node(cluster, tmp_path / "runs" / "resumes")
        assert wait_job(cluster, job) == "SUCCEEDED", job_logs(cluster, job)[-3000:]
        state = json.loads(sorted((tmp_path / "runs" / "resumes").glob("checkpoint_*/trainer_state.json"))[-1].read_text())
        assert state["step"] == 60 and state["resumes"] >= 1

        # With --max-failures 0 the job ends with an error that says what happened and how to resume.
        job = _job_id(submit(cluster, *common, "--name", "fails", wait=False))
        second = _kill_a_training_node(cluster, tmp_path / "runs" / "fails")
        assert second != lost
        assert wait_job(cluster, job) == "FAILED"
        logs = job_logs(cluster, job)
        assert "training run 'fails' failed: a Ray Train worker died" in logs, logs[-3000:]
        assert "Relaunch with the same --name" in logs
    finally:
        local.stop(tmp_path / "state")
    # Everything of that cluster is gone, and nothing else: the test session's own Ray cluster still works.
    assert not local._processes_of(cluster.temp_dir) and not local.cluster_processes(cluster)
    assert not (tmp_path / "state" / local.STATE_FILE).exists()
    local.stop(tmp_path / "state")  # idempotent
    assert ray.get(ray.put(41)) + 1 == 42 and ray.available_resources().get("CPU", 0) > 0


def _gcs_call(address: str, token: str | None):
    """One GCS RPC over a plain gRPC channel, with the given bearer token (or none)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        return stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=20)


def _client_server_call(address: str, token: str | None):
    """A ping of the Ray client server over a plain gRPC channel, with the given bearer token (or none)."""
    import grpc
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    request = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
    with grpc.insecure_channel(address) as channel:
        return ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(request, metadata=metadata, timeout=20)


def _http_status(url: str, headers: dict) -> int:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20).status
    except urllib.error.HTTPError as error:
        return error.code


OBJECT_STORE_JOB = """
import sys, mlflow, ray, s3fs
ray.init()

@ray.remote(resources={"node_worker1": 0.01})
def write():
    fs = s3fs.S3FileSystem()
    fs.pipe_file("distsleep/probe.txt", b"written on worker1")
    return fs.cat_file("distsleep/probe.txt")

print("from worker1:", ray.get(write.remote()))
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    mlflow.log_text("hello", "probe.txt")
print("artifacts:", s3fs.S3FileSystem().find("distsleep/mlflow"))
"""


def test_cluster_needs_its_token_listens_on_loopback_and_stops_completely(tmp_path):
    """Without network namespaces: every server of the cluster on 127.0.0.1 (the S3 server too); the GCS, the
    job API and MLflow's host check refuse clients without the cluster's token (or with a foreign Host header);
    the object store serves the worker nodes and MLflow's artifacts; `stop` leaves no process of the cluster
    behind, including the renamed agents, the Ray client server and the S3 server."""
    import grpc
    import psutil

    state = tmp_path / "state"
    # its own token, in the state dir; and the S3 server beside MLflow, which keeps its artifacts there
    cluster = local.start(state, workers=1, head_cpus=1, worker_cpus=1, object_store=True)
    try:
        token = Path(cluster.token_path).read_text().strip()
        assert Path(cluster.token_path).parent == state.resolve() and Path(cluster.token_path).stat().st_mode & 0o077 == 0
        temp = os.lstat(cluster.temp_dir)  # claimed before Ray: a real folder of this user, not a planted link
        assert stat.S_ISDIR(temp.st_mode) and temp.st_uid == os.getuid()
        assert cluster.env()["RAY_AUTH_TOKEN_PATH"] == cluster.token_path and cluster.env()["RAY_AUTH_MODE"] == "token"
        processes = local.cluster_processes(cluster)
        names = {p.name() for p in processes} | {" ".join(p.cmdline()[:3]) for p in processes}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names and any("ray.util.client.server" in n for n in names)
        # MLflow's server without its GenAI job runner and huey consumers (distsleep.cluster.mlflow_server)
        assert any("uvicorn" in n for n in names) and not any("huey" in n or "_job_runner" in n for n in names), names
        listening = set()
        for p in processes:  # a short-lived process (a job supervisor) may end while it is being listed
            try:
                listening |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                continue
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip, _ in listening), listening

        assert _gcs_call(cluster.ray_address, token).cluster_id
        client_server = next(p for p in processes if "ray.util.client.server" in " ".join(p.cmdline()))
        client_port = next(a for a in client_server.cmdline() if a.startswith("--port=")).split("=")[1]
        for wrong in (None, "0" * 64):
            for call, address in ((_gcs_call, cluster.ray_address), (_client_server_call, f"127.0.0.1:{client_port}")):
                with pytest.raises(grpc.RpcError) as refused:
                    call(address, wrong)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (call.__name__, refused.value)
        jobs = f"{cluster.dashboard_url}/api/jobs/"
        assert _http_status(jobs, {}) == 401 and _http_status(jobs, {"Authorization": "Bearer " + "0" * 64}) == 403
        assert _http_status(jobs, cluster.auth_headers()) == 200
        search = f"{cluster.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(search, {}) == 200 and _http_status(search, {"Host": "attacker.example:80"}) == 403
        # A job submitted with the environment `env` prints (as the README does) runs: drivers get the token.
        result = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard_url, "--", "python", "-c",
                                 "import ray; ray.init(); print('nodes', len(ray.nodes()))"],
                                capture_output=True, text=True, timeout=300, env=cluster.process_env())
        assert result.returncode == 0 and "nodes 2" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
        # The object store: its variables name files (0600, in the state dir), never the key; a task on the
        # worker node writes to the bucket, and an artifact logged to the cluster's MLflow lands there too.
        variables = cluster.env()
        assert variables["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(variables)
        credentials = Path(variables["AWS_SHARED_CREDENTIALS_FILE"])
        assert credentials.parent == state.resolve() and credentials.stat().st_mode & 0o077 == 0
        secret = credentials.read_text().split("aws_secret_access_key = ")[1].split()[0]
        result = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard_url, "--", "python", "-c",
                                 OBJECT_STORE_JOB, cluster.mlflow_uri], capture_output=True, text=True, timeout=300,
                                env=cluster.process_env())
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "from worker1: b'written on worker1'" in result.stdout
        assert re.search(r"artifacts: \['distsleep/mlflow/[0-9]+/[0-9a-f]{32}/artifacts/probe.txt'\]", result.stdout), result.stdout
        assert secret not in result.stdout + (state / "cluster.json").read_text()
    finally:
        local.stop(state)
    survivors = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [(p.pid, p.name()) for p in survivors]
    assert not local.cluster_processes(cluster)


def test_a_state_file_never_runs_commands_or_names_other_processes(tmp_path):
    """`env` is eval'ed by users: its values are quoted, so an edited cluster.json (or a state dir with a space)
    runs nothing. `stop` signals every process naming the temp dir and deletes it: a temp dir that `start` would
    not have made (an empty one names every process) is refused."""
    state = tmp_path / "state dir"
    state.mkdir()
    cluster = local.LocalCluster(state_dir=str(state), ray_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:2",
                                 mlflow_uri=f"http://127.0.0.1:5000$(touch {tmp_path / 'ran'})", temp_dir="/tmp/dsc-0123abcd",
                                 token_path=str(state / "auth_token"))
    cluster.save()
    exports = subprocess.run([sys.executable, "-m", "distsleep.cluster.local", "env", "--state-dir", str(state)],
                             capture_output=True, text=True, check=True).stdout
    shown = subprocess.run(["bash", "-c", exports + 'printf "%s\\n" "$MLFLOW_TRACKING_URI" "$RAY_AUTH_TOKEN_PATH"'],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown == [cluster.mlflow_uri, cluster.token_path] and not (tmp_path / "ran").exists()
    data = json.loads((state / local.STATE_FILE).read_text())
    (state / local.STATE_FILE).write_text(json.dumps({**data, "temp_dir": ""}))
    with pytest.raises(RuntimeError, match=r"temp_dir '' is not a cluster temp dir"):
        local.stop(state)
    # Object-store variables reach the environment of what the cluster commands start and the eval'ed lines: only
    # those `start` writes are taken (a key is not quoted, and LD_PRELOAD would load a library into every command).
    for key in (f"AWS_ENDPOINT_URL=x; touch {tmp_path / 'ran'}; X", "LD_PRELOAD"):
        (state / local.STATE_FILE).write_text(json.dumps({**data, "object_store": {key: "/tmp/x"}}))
        env = subprocess.run([sys.executable, "-m", "distsleep.cluster.local", "env", "--state-dir", str(state)],
                             capture_output=True, text=True)
        assert env.returncode != 0 and "export" not in env.stdout, env.stdout
        assert "object_store holds variables `start` never writes" in env.stderr and repr(key) in env.stderr, env.stderr
    assert not (tmp_path / "ran").exists()


def test_the_cluster_command_says_what_is_wrong_without_a_traceback(tmp_path):
    """Node CPUs are whole numbers, as `ray start --num-cpus` takes them (an option parsed as 2.0 reached it as
    "2.0" and Ray refused the head); a state dir without a cluster is named, with how to start one."""
    command = [sys.executable, "-m", "distsleep.cluster.local"]
    state = tmp_path / "none"
    done = subprocess.run([*command, "env", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and not done.stdout and "Traceback" not in done.stderr
    assert f"{state / local.STATE_FILE}: no cluster was started from {state}" in done.stderr
    assert "cluster/local/start.sh --state-dir" in done.stderr
    done = subprocess.run([*command, "start", "--state-dir", str(state), "--head-cpus", "1.5"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--head-cpus: invalid int value: '1.5'" in done.stderr
    assert local.whole_cpus(2.0, "--head-cpus") == 2 and isinstance(local.whole_cpus(2.0, "--head-cpus"), int)
    for cpus in (0.5, 0):
        with pytest.raises(ValueError, match=r"--worker-cpus .*: a node has a whole number of CPUs, at least 1"):
            local.start(state, worker_cpus=cpus)
    assert not state.exists()  # refused before anything was made


EMBEDDED = """
import psutil, ray
from distsleep.runtime import connect_ray
connect_ray("local")
processes = psutil.Process().children(recursive=True)
listening = {c.laddr.ip for p in processes for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
import os
print(os.environ["RAY_AUTH_MODE"], ray.get_runtime_context().gcs_address.split(":")[0], *sorted(listening))
ray.shutdown()
"""


def test_address_local_starts_a_cluster_as_secure_as_the_default(tmp_path):
    """Ray's `--address local` (or RAY_ADDRESS=local) starts a new cluster like no address at all: on 127.0.0.1
    with token auth, even when the environment asks for no auth."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", local.LOOPBACK_SWITCH)}
    # An inherited "disabled" is what must be overridden: the cluster this starts still has token auth.
    env.update(RAY_AUTH_MODE="disabled", RAY_ADDRESS="local")
    done = subprocess.run([sys.executable, "-c", EMBEDDED], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    auth, gcs_ip, *listening = done.stdout.split()
    assert auth == "token" and gcs_ip == "127.0.0.1" and listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, done.stdout


def test_the_predictable_temp_dir_is_claimed_or_refused(tmp_path):
    """The cluster's temp dir has a predictable name: made when new, kept when it is a folder of this user (left by
    an earlier cluster), refused when it is a symlink (planted to redirect Ray's files) or not a folder, and
    nothing is written where a symlink points."""
    fresh = tmp_path / "dsc-fresh"
    local.claim_temp_dir(str(fresh))
    assert fresh.is_dir() and fresh.stat().st_uid == os.getuid() and fresh.stat().st_mode & 0o077 == 0
    left = tmp_path / "dsc-left"
    left.mkdir()
    local.claim_temp_dir(str(left))
    assert left.is_dir()
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    planted = tmp_path / "dsc-planted"
    planted.symlink_to(target)
    with pytest.raises(RuntimeError, match=r"dsc-planted: the cluster's temp dir already exists and is a symlink"):
        local.claim_temp_dir(str(planted))
    assert target.stat().st_mode & 0o777 == 0o755 and not any(target.iterdir())
    squatted = tmp_path / "dsc-file"
    squatted.write_text("")
    with pytest.raises(RuntimeError, match="is not a folder"):
        local.claim_temp_dir(str(squatted))
