"""The cluster configs under cluster/ (Ray cluster launcher for AWS, KubeRay manifests), checked without a cluster.

They cannot be run here, so these tests check what can go wrong on paper: fields the launcher and the
operator need, installation as the repo does it, job entrypoints that parse with the real CLI, paths
every pod can reach, resources that can host the training workers a job asks for, and nothing bound
to 0.0.0.0 without a stated reason.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_FILES = sorted((CLUSTER / "aws").glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
README = CLUSTER / "README.md"

# jobs/<file>.py -> the `distsleep` subcommand it wraps (each job calls main([SUBCOMMAND, *argv])).
JOB_SUBCOMMANDS = {"pretrain": "pretrain", "finetune": "finetune", "sweep": "sweep", "preprocess": "preprocess"}
TRAINING_SUBCOMMANDS = {"pretrain", "finetune", "sweep"}
# Options whose values are paths the job reads or writes on the cluster.
PATH_OPTIONS = ("shards", "storage_path", "root", "out", "init_from")
RAY_KINDS = {"RayCluster", "RayJob"}
K8S_KINDS = RAY_KINDS | {"PersistentVolumeClaim", "Deployment", "Service"}


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in KUBERAY_FILES for doc in load_docs(path)]


def ray_version() -> str:
    import ray

    return ray.__version__


def train_defaults():
    from distsleep.train.config import TrainConfig

    return TrainConfig()


def parse_quantity(value) -> float:
    """A Kubernetes quantity ("8", "500m", "48Gi", "1500M") as a number (cores or bytes)."""
    text = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def image_tag(image: str) -> str:
    name = image.rsplit("/", 1)[-1]  # a registry host may carry a port: registry:5000/ns/name:tag
    assert ":" in name, f"image {image!r} has no tag: pin it to the Ray version"
    return name.split(":", 1)[1]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    from distsleep.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("distsleep.cli.build_parser() has no subcommands")


def parse_job_command(tokens: list[str], where: str) -> tuple[str, argparse.Namespace]:
    """`python jobs/<file>.py ARGS` -> (subcommand, the namespace the real CLI parses ARGS into)."""
    assert len(tokens) >= 2 and tokens[0] in ("python", "python3"), f"{where}: expected `python jobs/<file>.py ...`, got {tokens[:2]}"
    match = re.fullmatch(r"jobs/(\w+)\.py", tokens[1])
    assert match, f"{where}: the script must be jobs/<file>.py (relative to the repository), got {tokens[1]!r}"
    assert (REPO / tokens[1]).is_file(), f"{where}: {tokens[1]} does not exist in the repository"
    assert match.group(1) in JOB_SUBCOMMANDS, f"{where}: no known subcommand for {tokens[1]}"
    subcommand = JOB_SUBCOMMANDS[match.group(1)]
    parsers = subcommand_parsers()
    if subcommand not in parsers:
        pytest.skip(f"{where}: `distsleep {subcommand}` is not in build_parser() yet, so {tokens[1]} cannot be parsed")
    from distsleep.cli import build_parser

    try:
        args = build_parser().parse_args([subcommand, *tokens[2:]])
    except SystemExit as error:
        raise AssertionError(f"{where}: `{shlex.join(tokens)}` does not parse with `distsleep {subcommand}` "
                             f"(argparse exit {error.code}; its message is above)") from None
    return subcommand, args


def loader_opens(protocol: str) -> bool:
    """Whether the shard loader, as installed, opens `protocol://` URLs (manifest and shards).

    With distsleep/shards/storage.py the loader opens any fsspec protocol whose filesystem package is
    installed; before it, webdataset's gopen handlers decided.
    """
    try:
        importlib.import_module("distsleep.shards.storage")
    except ImportError:
        # The module, not the function of the same name that webdataset's namespace exports.
        return protocol in importlib.import_module("webdataset.gopen").gopen_schemes
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return False
    return True


def walk_strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)
    elif isinstance(node, str):
        yield node


def test_every_yaml_under_cluster_parses():
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    assert LAUNCHER_FILES, "no cluster-launcher config in cluster/aws/"
    assert KUBERAY_FILES, "no KubeRay manifest in cluster/kuberay/"
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} holds no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


# ------------------------------------------------------------------------------------------- cluster launcher


@pytest.fixture(params=LAUNCHER_FILES, ids=lambda p: p.name)
def launcher(request) -> dict:
    docs = load_docs(request.param)
    assert len(docs) == 1, f"{request.param}: `ray up` reads one document"
    return docs[0]


def commands(config: dict, *keys: str) -> list[str]:
    return [cmd for key in keys for cmd in config.get(key) or []]


def test_launcher_passes_rays_own_validation(launcher):
    # What `ray up` does before touching the cloud: fill defaults for the provider, then the JSON schema
    # and the cross-field checks (head type among the node types, sum of min_workers <= max_workers).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(launcher))


def test_launcher_required_fields_and_bounds(launcher):
    assert isinstance(launcher.get("cluster_name"), str) and launcher["cluster_name"]
    assert isinstance(launcher.get("max_workers"), int) and launcher["max_workers"] >= 1
    assert isinstance(launcher.get("idle_timeout_minutes"), (int, float)) and launcher["idle_timeout_minutes"] > 0
    provider = launcher["provider"]
    assert provider.get("type") == "aws" and provider.get("region"), "provider.type and provider.region are required"
    types = launcher["available_node_types"]
    assert launcher.get("head_node_type") in types, "head_node_type must name one of available_node_types"
    for name, node_type in types.items():
        for key in ("node_config", "resources", "min_workers", "max_workers"):
            assert key in node_type, f"node type {name!r} lacks {key}"
        assert node_type["node_config"].get("InstanceType"), f"node type {name!r} has no InstanceType"
        # Ray's built-in default AMI (Ubuntu 18.04, CUDA 11) cannot run torch 2.13: the image must be chosen.
        assert node_type["node_config"].get("ImageId"), f"node type {name!r} has no ImageId"
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= launcher["max_workers"], (
            f"node type {name!r}: need 0 <= min_workers <= max_workers <= global max_workers ({launcher['max_workers']})")
    assert types[launcher["head_node_type"]]["max_workers"] == 0, "the head type is not a worker type"
    assert sum(t["min_workers"] for t in types.values()) <= launcher["max_workers"]


def test_launcher_installs_like_the_repo(launcher):
    # The repo root is synced to the nodes and installed from it, pinned by requirements.lock: torch first,
    # then distsleep with DeepSpeed built without isolation against that torch and without its C++/CUDA ops.
    mounts = launcher.get("file_mounts") or {}
    synced = [remote for remote, local in mounts.items() if str(local).rstrip("/") in (".", "./")]
    assert synced, "file_mounts must sync the repository root ('.', where `ray up` runs) to the nodes"
    setup = commands(launcher, "setup_commands")
    torch_at = [i for i, c in enumerate(setup) if "requirements.lock" in c and re.search(r"\btorch\b", c)]
    package_at = [i for i, c in enumerate(setup) if "DS_BUILD_OPS=0" in c]
    assert torch_at, "setup_commands must install torch with -c requirements.lock"
    assert package_at, "setup_commands must install the package with DS_BUILD_OPS=0"
    install = setup[package_at[0]]
    for part in ("--no-build-isolation", "-c requirements.lock", "-e ."):
        assert part in install, f"the package install lacks {part!r}: {install}"
    assert torch_at[0] < package_at[0], "torch must be installed before the package (DeepSpeed's build imports it)"
    assert any(f"cd {remote}" in install for remote in synced), f"the package install must run in the synced repo {synced}"
    # The head runs the autoscaler's AWS provider, which needs boto3 (not in requirements.lock).
    assert any("boto3" in c for c in commands(launcher, "setup_commands", "head_setup_commands"))


def test_launcher_start_commands_bind_the_dashboard_to_loopback(launcher):
    head = [c for c in commands(launcher, "head_start_ray_commands") if "ray start" in c]
    assert len(head) == 1 and "--head" in head[0]
    for flag in ("--dashboard-host=127.0.0.1", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head[0], f"`ray start --head` lacks {flag}: {head[0]}"
    workers = [c for c in commands(launcher, "worker_start_ray_commands") if "ray start" in c]
    assert len(workers) == 1 and "--address=$RAY_HEAD_IP:6379" in workers[0]
    bound_everywhere = [s for s in walk_strings(launcher) if "0.0.0.0" in s]
    assert not bound_everywhere, f"nothing on a VM may bind to 0.0.0.0 (public interfaces too): {bound_everywhere}"


def test_launcher_turns_on_ray_token_auth(launcher):
    """Every node starts Ray with RAY_AUTH_MODE=token and the token file synced from where `ray up` runs."""
    assert launcher["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = commands(launcher, "setup_commands")
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in setup), "shells on the nodes need auth on"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in commands(launcher, key) if "ray start" in c]
        assert starts and all(c.index("export RAY_AUTH_MODE=token") < c.index("ray start") for c in starts), key
    servers = [c for c in commands(launcher, "head_start_ray_commands") if "mlflow server" in c]
    hosts = re.search(r"--allowed-hosts[ =](\$\([^)]*\)\S*|\S+)", servers[0])
    assert hosts and hosts.group(1).count(":5000") == 3, "the MLflow server must list the Host headers it answers"


def test_launcher_mlflow_server_serves_the_workers(launcher):
    # 127.0.0.1 would serve the head alone, and training's rank 0 logs from a worker node; 0.0.0.0 would
    # include public interfaces. The exported URI must name the server's port.
    servers = [c for c in commands(launcher, "head_start_ray_commands") if "mlflow server" in c]
    assert len(servers) == 1, "one MLflow server on the head"
    host = re.search(r"--host[ =](\$\([^)]*\)|\S+)", servers[0])
    port = re.search(r"--port[ =](\d+)", servers[0])
    assert host and port, f"the MLflow server needs explicit --host and --port: {servers[0]}"
    assert host.group(1) not in ("0.0.0.0", "127.0.0.1", "localhost", "::"), f"MLflow --host {host.group(1)}"
    exported = [c for c in commands(launcher, "head_start_ray_commands") if "ray start" in c][0]
    uri = re.search(r"MLFLOW_TRACKING_URI=http://(\$\([^)]*\)|[^:\s]+):(\d+)", exported)
    assert uri, "MLFLOW_TRACKING_URI must be exported before `ray start --head` (job drivers inherit it)"
    assert uri.group(1) == host.group(1) and uri.group(2) == port.group(1), "the tracking URI must point at the server"


def test_launcher_node_types_can_host_the_jobs(launcher):
    from distsleep.cli import build_parser

    d = train_defaults()
    types = {k: v for k, v in launcher["available_node_types"].items() if k != launcher["head_node_type"]}
    gpu = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    cpu = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) == 0}
    assert gpu, "a GPU worker type for training"
    assert cpu, "a CPU worker type for preprocessing"
    for name, node_type in gpu.items():
        res = node_type["resources"]
        assert "CPU" in res and "GPU" in res, f"{name}: declare CPU and GPU explicitly"
        per_node = min(res["GPU"] // d.gpus_per_worker, res["CPU"] // d.cpus_per_worker)
        assert per_node >= 1, f"{name} ({res}) cannot host one training worker ({d.cpus_per_worker} CPU, {d.gpus_per_worker} GPU)"
    most = max(v["max_workers"] * min(v["resources"]["GPU"] // d.gpus_per_worker, v["resources"]["CPU"] // d.cpus_per_worker)
               for v in gpu.values())
    assert most >= d.num_workers, f"at most {most} training workers fit, the default is {d.num_workers}"
    preprocess = build_parser().parse_args(["preprocess", "--root", "r", "--out", "o"])
    assert any(v["resources"]["CPU"] >= preprocess.cpus_per_task for v in cpu.values())


# --------------------------------------------------------------------------------------------------- KubeRay


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for path, doc in kuberay_docs():
        if doc.get("kind") == "RayCluster":
            specs.append((f"{path.name}:RayCluster/{doc['metadata']['name']}", doc["spec"]))
        elif doc.get("kind") == "RayJob":
            specs.append((f"{path.name}:RayJob/{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]))
    return specs


def ray_jobs() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['metadata']['name']}", doc) for path, doc in kuberay_docs() if doc.get("kind") == "RayJob"]


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(name, group) for the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs") or []]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def pod_resources(group: dict) -> dict[str, float]:
    limits = ray_container(group)["resources"]["limits"]
    out = {"CPU": parse_quantity(limits["cpu"]), "memory": parse_quantity(limits["memory"]),
           "GPU": parse_quantity(limits.get("nvidia.com/gpu", 0))}
    params = group.get("rayStartParams") or {}
    if "num-cpus" in params:  # what Ray advertises, e.g. 0 on the head
        out["CPU"] = float(params["num-cpus"])
    return out


def mounts(group: dict) -> dict[str, str]:
    """mountPath -> claimName of the PVCs mounted into the Ray container."""
    pod = group["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for m in ray_container(group).get("volumeMounts") or [] if m["name"] in claims}


CLUSTER_SPECS = ray_cluster_specs()
JOBS = ray_jobs()


def test_kuberay_kinds_and_api_versions():
    kinds = [doc.get("kind") for _, doc in kuberay_docs()]
    assert "RayCluster" in kinds and "RayJob" in kinds
    for path, doc in kuberay_docs():
        assert doc.get("kind") in K8S_KINDS, f"{path.name}: unexpected kind {doc.get('kind')}"
        if doc["kind"] in RAY_KINDS:
            assert doc.get("apiVersion") == "ray.io/v1", f"{path.name}: {doc['kind']} must use apiVersion ray.io/v1"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} without metadata.name"


@pytest.mark.parametrize("where,spec", CLUSTER_SPECS, ids=[w for w, _ in CLUSTER_SPECS])
def test_kuberay_cluster_spec(where, spec):
    version = ray_version()
    assert str(spec.get("rayVersion")) == version, f"{where}: rayVersion {spec.get('rayVersion')!r}, installed Ray is {version}"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", (
        f"{where}: the head Service exposes dashboard and GCS without authentication; keep it ClusterIP")
    assert spec.get("workerGroupSpecs"), f"{where}: no worker groups"
    shared = None
    for name, group in groups(spec):
        container = ray_container(group)
        assert image_tag(container["image"]).startswith(version), f"{where}/{name}: image {container['image']} is not Ray {version}"
        limits = container["resources"]["limits"]
        requests = container["resources"].get("requests", {})
        assert "cpu" in limits and "memory" in limits, f"{where}/{name}: Ray sizes itself from the cpu/memory limits"
        if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
            assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), f"{where}/{name}: GPU requests must equal limits"
            assert parse_quantity(limits["nvidia.com/gpu"]) >= 1
        pod = group["template"]["spec"]
        assert not pod.get("hostNetwork"), f"{where}/{name}: hostNetwork would bind Ray's ports on the node"
        assert not any(p.get("hostPort") for c in pod["containers"] for p in c.get("ports") or []), f"{where}/{name}: hostPort"
        if name != "head":
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (
                f"{where}/{name}: need minReplicas <= replicas <= maxReplicas")
        # One shared volume, at the same path, in every pod: job paths must mean the same everywhere.
        assert mounts(group), f"{where}/{name}: no shared volume mounted"
        shared = shared or mounts(group)
        assert mounts(group) == shared, f"{where}/{name}: mounts {mounts(group)} differ from the head's {shared}"
    if ":RayCluster/" in where:  # the long-lived cluster takes every job: preprocessing and training
        kinds = {pod_resources(g)["GPU"] > 0 for _, g in groups(spec)[1:]}
        assert kinds == {True, False}, f"{where}: needs a CPU worker group (preprocessing) and a GPU one (training)"


@pytest.mark.parametrize("where,spec", CLUSTER_SPECS, ids=[w for w, _ in CLUSTER_SPECS])
def test_kuberay_clusters_use_ray_token_auth(where, spec):
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token authentication must be on"


def test_kuberay_shared_volume_is_read_write_many():
    claims = {doc["metadata"]["name"]: doc for _, doc in kuberay_docs() if doc["kind"] == "PersistentVolumeClaim"}
    used = {claim for _, spec in CLUSTER_SPECS for _, group in groups(spec) for claim in mounts(group).values()}
    assert used, "no pod mounts a PVC"
    for claim in used:
        assert claim in claims, f"PVC {claim} is mounted but not defined in cluster/kuberay/"
        assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], f"PVC {claim}: every pod writes it at once (ReadWriteMany)"


def test_kuberay_binds_to_all_interfaces_only_with_a_reason():
    # Inside a pod 0.0.0.0 means the pod IP, and that is fine only behind a ClusterIP Service, with a comment
    # (mentioning 0.0.0.0) right above that says why.
    for path in KUBERAY_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if "0.0.0.0" not in code:
                continue
            above = [text for text in lines[max(0, i - 12):i] if text.strip().startswith("#")]
            assert any("0.0.0.0" in text for text in above) or "#" in line, (
                f"{path.name}:{i + 1}: binds to 0.0.0.0 without a comment explaining why")
    for path, doc in kuberay_docs():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{path.name}: Service {doc['metadata']['name']} is exposed"


def test_launcher_mlflow_server_runs_no_job_executors(launcher):
    """The environment of `distsleep cluster start`'s server (SERVER_ENV): no GenAI job runner, no huey consumers."""
    from distsleep.cluster.mlflow_server import SERVER_ENV

    servers = [c for c in commands(launcher, "head_start_ray_commands") if "mlflow server" in c]
    assert servers and all(f"{k}={v} " in c.split("mlflow server")[0] for c in servers for k, v in SERVER_ENV.items())


def test_kuberay_mlflow_server_runs_no_job_executors():
    from distsleep.cluster.mlflow_server import SERVER_ENV

    containers = [c for _, doc in kuberay_docs() if doc["kind"] == "Deployment"
                  for c in doc["spec"]["template"]["spec"]["containers"] if any("mlflow server" in s for s in walk_strings(c))]
    assert containers
    for container in containers:
        env = {e["name"]: e["value"] for e in container.get("env") or []}
        assert SERVER_ENV.items() <= env.items(), env


def test_kuberay_mlflow_uri_names_a_service_that_accepts_it():
    services = {doc["metadata"]["name"]: {p["port"] for p in doc["spec"]["ports"]}
                for _, doc in kuberay_docs() if doc["kind"] == "Service"}
    server_args = " ".join(s for _, doc in kuberay_docs() if doc["kind"] == "Deployment"
                           for s in walk_strings(doc) if "mlflow server" in s)
    allowed = re.search(r"--allowed-hosts[ =](\S+)", server_args)
    uris = set()
    for _, doc in kuberay_docs():
        for group_spec in ([doc["spec"]] if doc["kind"] == "RayCluster" else [doc["spec"]["rayClusterSpec"]] if doc["kind"] == "RayJob" else []):
            for _, group in groups(group_spec):
                uris |= {e["value"] for e in ray_container(group).get("env") or [] if e["name"] == "MLFLOW_TRACKING_URI"}
        if doc["kind"] == "RayJob" and doc["spec"].get("runtimeEnvYAML"):
            env = (yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) or {}).get("env_vars") or {}
            uris |= {env["MLFLOW_TRACKING_URI"]} if "MLFLOW_TRACKING_URI" in env else set()
    assert uris, "no MLFLOW_TRACKING_URI in the KubeRay manifests"
    for uri in uris:
        match = re.fullmatch(r"http://([\w.-]+):(\d+)/?", uri)
        assert match, f"MLFLOW_TRACKING_URI {uri!r}: expected http://SERVICE:PORT"
        service, port = match.group(1).split(".")[0], int(match.group(2))
        assert port in services.get(service, set()), f"{uri}: no Service {service!r} with port {port} in cluster/kuberay/"
        # MLflow rejects Host headers outside localhost and private IPs unless --allowed-hosts lists them.
        assert allowed and f"{match.group(1)}:{port}" in allowed.group(1).split(","), (
            f"{uri}: the MLflow server's --allowed-hosts must include {match.group(1)}:{port}")


@pytest.mark.parametrize("where,job", JOBS, ids=[w for w, _ in JOBS])
def test_rayjob(where, job):
    spec = job["spec"]
    assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: the job's cluster must go away when it ends"
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    assert isinstance(runtime_env, dict), f"{where}: runtimeEnvYAML must be a mapping"
    env_vars = runtime_env.get("env_vars") or {}
    # The entrypoint is relative to the repository: the job runs in working_dir (the repo inside the image).
    assert str(runtime_env.get("working_dir", "")).startswith("/"), f"{where}: runtimeEnvYAML needs working_dir (the repo in the image)"

    subcommand, args = parse_job_command(shlex.split(spec["entrypoint"]), where)
    cluster = spec["rayClusterSpec"]
    workers = [(name, g) for name, g in groups(cluster)[1:]]
    shared_paths = list(mounts(cluster["headGroupSpec"]))

    # Paths: on the shared volume (mounted at the same place in every pod), or a URL the code can open.
    for option in PATH_OPTIONS:
        value = getattr(args, option, None)
        if not value:
            continue
        scheme = re.match(r"^([a-z][a-z0-9+.-]*)://", value)
        if scheme:
            if option == "shards":
                assert loader_opens(scheme.group(1)), (
                    f"{where}: --shards {value}: the installed shard loader cannot open {scheme.group(1)}:// "
                    "URLs; put the shards on the shared volume")
            continue
        assert value.startswith("/") and any(value.startswith(p.rstrip("/") + "/") for p in shared_paths), (
            f"{where}: --{option.replace('_', '-')} {value} is not on the shared volume {shared_paths}: other pods cannot see it")

    all_env = {e["name"] for _, g in groups(cluster) for e in ray_container(g).get("env") or []} | set(env_vars)
    if subcommand in TRAINING_SUBCOMMANDS:
        assert "MLFLOW_TRACKING_URI" in all_env or args.tracking_uri, f"{where}: training needs an MLflow server"
        per_pod = [(name, pod_resources(g), g) for name, g in workers]
        if args.use_gpu:
            # DeepSpeed picks CUDA by itself; DS_ACCELERATOR=cpu on GPU pods would train on the CPUs.
            assert "DS_ACCELERATOR" not in all_env, f"{where}: no DS_ACCELERATOR on a GPU job"

        def fit(res: dict) -> int:  # training workers one pod holds
            counts = [res["CPU"] // args.cpus_per_worker]
            if args.use_gpu:
                counts.append(res["GPU"] // args.gpus_per_worker)
            return int(min(counts))

        assert any(fit(res) >= 1 for _, res, _ in per_pod), (
            f"{where}: no worker pod holds one training worker ({args.cpus_per_worker} CPU"
            f"{f', {args.gpus_per_worker} GPU' if args.use_gpu else ''}); pods: {[(n, r) for n, r, _ in per_pod]}")
        most = sum(g["maxReplicas"] * fit(res) for _, res, g in per_pod)
        assert args.num_workers <= most, f"{where}: --num-workers {args.num_workers}, but at most {most} fit in the worker groups"
        if subcommand == "sweep":
            # The sweep sizes its concurrency from the resources present at launch (distsleep/sweep/run.py)
            # and refuses to start when one trial does not fit: the GPUs must be there from the start.
            at_start = sum(g["replicas"] * fit(res) for _, res, g in per_pod)
            assert args.num_workers <= at_start, (
                f"{where}: one trial needs {args.num_workers} workers, the cluster starts with room for {at_start}")
    elif subcommand == "preprocess":
        from ray._private import ray_constants

        heap = 1 - ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION  # Ray's share of memory for tasks
        cpu_pods = [(name, pod_resources(g)) for name, g in workers if pod_resources(g)["CPU"] >= args.cpus_per_task]
        assert cpu_pods, f"{where}: no worker pod has {args.cpus_per_task} CPUs for a preprocessing task"
        for name, res in cpu_pods:
            tasks = res["CPU"] // args.cpus_per_task
            need = tasks * args.memory_mb * 2**20
            assert need <= heap * res["memory"], (
                f"{where}/{name}: {tasks:g} tasks x {args.memory_mb} MB exceed Ray's task memory "
                f"({heap:.0%} of {res['memory'] / 2**30:g} GiB): CPUs would sit idle")


# ---------------------------------------------------------------------------------------------------- README


def readme_job_commands() -> list[list[str]]:
    """The `python jobs/... ARGS` part of every `ray job submit ... -- python jobs/...` in cluster/README.md."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0]
            if "ray job submit" in line and " -- " in line:
                found.append(shlex.split(line.split(" -- ", 1)[1]))
    return found


def test_readme_job_commands_parse():
    found = readme_job_commands()
    assert found, "cluster/README.md shows no `ray job submit ... -- python jobs/...` command"
    for tokens in found:
        parse_job_command(tokens, "cluster/README.md")
