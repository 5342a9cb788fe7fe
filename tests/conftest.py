"""Shared test fixtures.

Real-data tests read ../shared/data (next to the repository). On a user's clone without it they skip with
the reason shown; with DISTSLEEP_REQUIRE_SHARED=1 (set by .ci/run) its absence is an error instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DISTSLEEP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every 2 s: on the tests' two-worker runs that is up to ~2 s at each
# start and end of a run (~3 s a launch in tests/test_train.py). The tests' clusters are small enough to poll
# 4x as often; real clusters keep Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray Train starts a preemption watcher actor (one more Python process) per launch to log cloud nodes' drains;
# the tests' nodes are never drained, and it cost 0.4-1.4 s of a ~17 s two-step launch (3 A/B pairs, 3 launches
# each). Real clusters keep it.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _session_ray_token() -> str:
    """A fresh Ray auth token for this test session (the session's clusters and every client use it), kept
    out of the user's ~/.ray/auth_token."""
    import atexit
    import secrets
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="distsleep-tests-ray-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(secrets.token_hex(32))
    return str(path)


# Token auth stays on for every cluster the tests start, and they listen on 127.0.0.1 only: set before Ray is
# imported, so ray.init() and the subprocesses the tests start see it too (distsleep.runtime explains).
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ["RAY_AUTH_TOKEN_PATH"] = _session_ray_token()
from distsleep.runtime import secure_local_ray  # noqa: E402

secure_local_ray()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real fixtures not found at {SHARED_DATA} (set DISTSLEEP_SHARED_DATA or clone next to shared/)"
        if os.environ.get("DISTSLEEP_REQUIRE_SHARED") == "1":
            pytest.fail(message + "; DISTSLEEP_REQUIRE_SHARED=1 makes this an error", pytrace=False)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """One S3-compatible server (moto) on 127.0.0.1 for the session, and the standard AWS variables pointing
    every client at it: AWS_ENDPOINT_URL and a random key pair in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    (random so that tests can search every file written for them). Set before the session's Ray cluster
    starts (`ray_local` depends on this), so its workers inherit them as a cluster's nodes would. Yields
    {"endpoint", "key", "secret"}."""
    import secrets

    from distsleep.cluster.objectstore import start_s3_server, stop_s3_server

    server = start_s3_server(log=tmp_path_factory.mktemp("s3-server") / "moto.log")
    credentials = {"AWS_ACCESS_KEY_ID": f"DSTESTKEY{secrets.token_hex(6).upper()}",
                   "AWS_SECRET_ACCESS_KEY": f"dstestsecret{secrets.token_hex(16)}",
                   "AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in [*credentials, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    os.environ.update(credentials)
    try:
        yield {"endpoint": server.endpoint, "key": credentials["AWS_ACCESS_KEY_ID"],
               "secret": credentials["AWS_SECRET_ACCESS_KEY"]}
    finally:
        stop_s3_server(server)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(object_store, request) -> str:
    """A new, empty bucket on the session's S3 server (s3://NAME), named after the test."""
    import re
    import secrets

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + secrets.token_hex(3)
    s3fs.S3FileSystem(use_listings_cache=False).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(object_store):
    """One real local Ray cluster (2 CPUs) shared by every test that needs one; yields its GCS address. Its
    workers see the session's object store (`object_store`)."""
    import ray

    # With its dashboard (on 127.0.0.1): Ray Train V2 needs the state API it serves.
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def training_shards(tmp_path_factory, ray_local) -> Path:
    """C4-A1 shards of a small synthetic SHHS1 cohort (8 nights x 2 h), split 5/1/2; yields the manifest path.
    Shared by the training, sweep and cluster tests, which only read it (fold manifests land beside it)."""
    from distsleep.config import PreprocessConfig, SplitConfig
    from distsleep.shards.pipeline import run_preprocess
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("train-cohort")
    generate_cohort(root, CohortConfig(n_records=8, hours=2.0, seed=4, workers=2), progress=False)
    out = tmp_path_factory.mktemp("train-shards")
    result = run_preprocess(root, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert {k: v["records"] for k, v in result.manifest["totals"].items()} == {"train": 5, "val": 1, "test": 2}
    return out / "manifest.json"


@pytest.fixture(scope="session")
def multimodal_shards(tmp_path_factory, ray_local) -> Path:
    """Multimodal shards (EEG C4/C3, EOG L/R, EMG, ECG, airflow; SynthSleepNet filters) of a small synthetic
    cohort with frequent apneas (median AHI 40): 8 nights x 1.5 h, split 5/1/2. Shared by the seed-model tests."""
    from distsleep.config import CHANNEL_SETS, PreprocessConfig, SplitConfig
    from distsleep.shards.pipeline import run_preprocess
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("mm-cohort")
    generate_cohort(root, CohortConfig(n_records=8, hours=1.5, seed=3, workers=2, ahi_median=40), progress=False)
    out = tmp_path_factory.mktemp("mm-shards")
    config = PreprocessConfig(channels=CHANNEL_SETS["multimodal"]["shhs"], filter_recipe="synthsleepnet")
    result = run_preprocess(root, out, config, SplitConfig(n_val=1), progress=False)
    assert {k: v["records"] for k, v in result.manifest["totals"].items()} == {"train": 5, "val": 1, "test": 2}
    return out / "manifest.json"


@pytest.fixture(scope="session")
def physio_gan(multimodal_shards, tmp_path_factory):
    """A tiny Physio-GAN (small preset, 20 steps) trained for N1 on the multimodal shards' training records with
    2 Ray Train workers; yields (GanTrainConfig, GanOutcome). Shared by the GAN tests and the ISATSleepNet run."""
    from distsleep.gan.config import GanTrainConfig
    from distsleep.gan.train import run_gan_training

    tmp = tmp_path_factory.mktemp("gan-run")
    cfg = GanTrainConfig(shards=str(multimodal_shards), model_size="small", batch_size=8, n_critic=2, max_steps=20,
                         checkpoint_every=20, log_every=1, psd_epochs=64, num_workers=2,
                         storage_path=str(tmp / "runs"), name="gan-tiny", tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                         experiment="tests")
    return cfg, run_gan_training(cfg)


@pytest.fixture(scope="session")
def gan_augmentation(physio_gan, multimodal_shards, tmp_path_factory) -> Path:
    """augmentation.json of 60 synthetic N1 epochs (6 shards) from `physio_gan`, for the multimodal shards."""
    from distsleep.gan.augment import AugmentConfig, run_augment

    cfg, outcome = physio_gan
    out = tmp_path_factory.mktemp("gan-augmentation")
    result = run_augment(AugmentConfig(generator=outcome.run_id, tracking_uri=cfg.tracking_uri,
                                       shards=str(multimodal_shards), out=str(out), n_epochs=60, epochs_per_record=10))
    return result.path


@pytest.fixture(scope="session")
def staging_cohort(tmp_path_factory) -> Path:
    """A small synthetic SHHS1 cohort (5 nights x 45 min) in the NSRR layout, for evaluate/predict/export tests."""
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("staging-cohort")
    generate_cohort(root, CohortConfig(n_records=5, hours=0.75, seed=11, workers=2), progress=False)
    return root


@pytest.fixture(scope="session")
def staging_shards(staging_cohort, tmp_path_factory, ray_local) -> Path:
    """`staging_cohort` as C4-A1 shards, split 2 train / 1 val / 2+ test; yields the manifest path."""
    from distsleep.config import PreprocessConfig, SplitConfig
    from distsleep.shards.pipeline import run_preprocess

    out = tmp_path_factory.mktemp("staging-shards")
    result = run_preprocess(staging_cohort, out, PreprocessConfig(), SplitConfig(n_val=1, train_fraction=0.3),
                            progress=False)
    assert result.manifest["totals"]["test"]["records"] >= 2
    return out / "manifest.json"
