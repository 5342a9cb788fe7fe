"""Model and generator bundles: what they hold, where a user's name for one points, and loading them safely.

A bundle is one file holding only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`; a file holding anything else is refused, since unpickling arbitrary objects
can run code. Two kinds:

* a model bundle (`model.pt`, format `distsleep-model/1`): fp32 weights plus what inference needs to
  reproduce the inputs (preprocessing, channels, window length, normalisation) and what the model was
  trained on (`data`: manifest hash and training records), logged by every training run as the MLflow
  artifact `model/model.pt`;
* a generator bundle (`generator.pt`, format `distsleep-gan/1`): a Physio-GAN generator with its scaling and
  provenance, in every GAN checkpoint and logged as `generator/generator.pt`.

`resolve(source, kind)` turns any of the ways a user names one into a local file:

* the file itself;
* a folder holding it, or `model/model.pt` (a downloaded artifact folder), or a run's storage folder
  (STORAGE/NAME) or checkpoint whose latest `checkpoint_*` holds it;
* with `weights=True` (fine-tuning's --init-from), also a training checkpoint's `best_model.pt` (weights only:
  it lacks the preprocessing and channels that inference needs, so `predict` refuses it);
* an MLflow run id, `runs:/<run id>[/<artifact path>]`, or `models:/<name>/<version>` / `models:/<name>@<alias>`
  (a registered model version whose source is a run's `model` folder), downloaded from the tracking store.

`read(path, kind)` loads and checks a bundle, `load_model` builds the model of a model bundle.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from distsleep.config import default_tracking_uri
from distsleep.errors import InputError, first_line
from distsleep.models import build_model, model_normalization, required_channels
from distsleep.shards.manifest import manifest_hash, seen_people, split_records
from distsleep.stages import STAGE_NAMES
from distsleep.tracking import PER_NIGHT_ARTIFACTS, client, download_json, sqlite_file
from distsleep.tracking.model_card import model_card

log = logging.getLogger("distsleep.bundle")

RUN_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_RUNS_URI = re.compile(r"^runs:/(?P<run>[^/]+)/?(?P<path>.*)$")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))/?$")


class BundleError(InputError):
    """A model bundle is missing, unreadable, unsafe to load, or inconsistent."""


@dataclass(frozen=True)
class BundleKind:
    """One kind of bundle: its format string, file name, MLflow artifact and the keys it must hold."""

    name: str
    format: str
    file: str
    artifact: str
    required: tuple[str, ...]
    checkpoint_weights: str | None = None  # a checkpoint's weights-only file of this kind's model

    @property
    def folder(self) -> str:
        return self.artifact.rsplit("/", 1)[0]


MODEL = BundleKind("model", "distsleep-model/1", "model.pt", "model/model.pt",
                   ("format", "model", "model_config", "state_dict", "preprocess", "channels", "stages", "seq_len"),
                   checkpoint_weights="best_model.pt")
GENERATOR = BundleKind("generator", "distsleep-gan/1", "generator.pt", "generator/generator.pt",
                       ("format", "model_config", "state_dict", "channels", "stages", "center_uv", "scale_uv"))


@dataclass(frozen=True)
class Located:
    """Where `resolve` found a bundle: the local file, a name for messages, and the MLflow run it came from."""

    path: Path
    name: str  # the local path, or the runs:/ / models:/ URI it was downloaded from
    run_id: str | None = None

    @property
    def weights_only(self) -> bool:
        """A checkpoint's bare weights rather than a bundle."""
        return self.path.name == MODEL.checkpoint_weights


# ------------------------------------------------------------------------------------------------ formats


def bundle_data(manifest: dict, trained_before=(), selected_before=()) -> dict:
    """What a model bundle records about its data (read back to keep the people a model depends on out of the
    records that later judge it): its training and validation records, the records its --init-from sources
    and the generators of its synthetic epochs learned from (`trained_before`), and those that chose its
    sources' checkpoints (`selected_before`)."""
    splits = split_records(manifest)
    return {"manifest_hash": manifest_hash(manifest), "records": {"train": splits["train"], "val": splits["val"]},
            "trained_before": sorted(trained_before), "selected_before": sorted(selected_before)}


def trained_records(data: dict) -> set[str]:
    """Every record a model learned from, given its `data` (a bundle's, a run identity, a data.json): its own
    training records and those its --init-from sources learned from ("trained_before"), so that a chain
    A -> B -> C is checked against A's people too."""
    return set(data.get("records", {}).get("train", [])) | set(data.get("trained_before", []))


def selected_records(data: dict) -> set[str]:
    """Every record whose scores chose a model's weights, given its `data`: its validation records (its best
    checkpoint and early stop) and those that chose its --init-from sources' ("selected_before"). They must not
    be among the test records that judge it or a model started from it; they may be its validation records
    again (fine-tuning on the manifest it was pre-trained on). Empty for a bundle older than this record."""
    return set(data.get("records", {}).get("val", [])) | set(data.get("selected_before", []))


@dataclass(frozen=True)
class PeopleOverlap:
    """The records of a manifest whose people a model depends on (`people_overlap`)."""
    learned: dict[str, list[str]]  # {"val": [...], "test": [...]}: a person the model learned from
    chose_test: list[str]  # test records of a person who chose it (and did not teach it)


def people_overlap(manifest: dict, data: dict) -> PeopleOverlap:
    """Which validation and test records of `manifest` belong to a person that a model with `data` learned from
    (`trained_records`), and which test records to a person that chose it (`selected_records`): the one check
    behind `evaluate`'s and `--init-from`'s refusals. Choosing people may be validation people again."""
    learned = trained_records(data)
    return PeopleOverlap(seen_people(manifest, learned), seen_people(manifest, selected_records(data) - learned)["test"])


def model_bundle(*, model: str, model_config, weights: dict, manifest: dict, roles, seq_len: int, stage: str,
                 task: str = "staging", trained_before=(), selected_before=()) -> dict:
    """The trained model as one file: fp32 weights plus what inference needs to reproduce the inputs."""
    return {
        "format": MODEL.format,
        "model": model,
        "model_config": model_config.to_dict(),
        "state_dict": {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
        "preprocess": manifest["config"]["preprocess"],
        "channels": list(roles),
        "stages": list(STAGE_NAMES),
        "seq_len": seq_len,
        "stage": stage,
        "task": task,
        "normalization": model_normalization(model),
        "data": bundle_data(manifest, trained_before, selected_before),  # what it was trained on: a run starting from it checks its splits against this
    }


def generator_bundle(*, weights: dict, gan_config, model_config, scaling: dict, manifest: dict, step: int,
                     run_id: str | None, real_counts: dict[str, int]) -> dict:
    """A Physio-GAN generator as one file: weights plus what is needed to produce uV epochs and trace their origin."""
    return {
        "format": GENERATOR.format,
        "model_config": model_config.to_dict(),
        "state_dict": {k: v.detach().float().cpu() for k, v in weights.items()},
        "gan_config": gan_config.to_dict(),
        "channels": list(gan_config.channels),
        "stages": list(gan_config.stages),
        "center_uv": list(scaling["center_uv"]),
        "scale_uv": list(scaling["scale_uv"]),
        "night_stats": list(scaling["night_stats"]),
        "sample_rate": float(manifest["config"]["preprocess"]["target_rate"]),
        "source_manifest": gan_config.shards,
        "source_config_hash": manifest.get("config_hash", ""),
        "preprocess": manifest["config"]["preprocess"],
        "train_records": list(scaling["records"]),
        "real_epochs": dict(real_counts),
        "step": int(step),
        "mlflow_run_id": run_id,
    }


# ------------------------------------------------------------------------------------------------ resolve


def _check_store(source: str, uri: str) -> None:
    db = sqlite_file(uri)
    if db is not None:
        if not db.is_file():
            # MLflow would silently create an empty store here and then report "run not found".
            raise BundleError(source, f"names an MLflow run or model, but there is no MLflow store at {db} "
                                      "(set MLFLOW_TRACKING_URI to the store of the training run)")


def _download(source: str, uri: str, run_id: str, artifact: str) -> Path:
    _check_store(source, uri)
    client(uri)  # MLflow's HTTP settings: fail fast, no progress bar per file
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, tracking_uri=uri))
    except Exception as error:  # MlflowException, OSError, ... all mean "not there" to the user
        first = first_line(error) or type(error).__name__
        raise BundleError(source, f"could not download {artifact!r} of MLflow run {run_id} from {uri}: {first}") from error


def _registered_source(source: str, uri: str, name: str, version: str | None, alias: str | None) -> str:
    """The source URI of a registered model version (for our bundles: runs:/<run id>/model)."""
    _check_store(source, uri)
    registry = client(uri)
    try:
        if version is None:
            version = registry.get_model_version_by_alias(name, alias).version
        return registry.get_model_version_download_uri(name, version)
    except Exception as error:
        first = first_line(error) or type(error).__name__
        raise BundleError(source, f"no such registered model version in {uri}: {first}") from error


# A run's checkpoint folders under STORAGE/NAME: Ray Train names them checkpoint_<timestamp>, so they sort by
# time; its checkpoint_manager_snapshot.json beside them is not one.
CHECKPOINT_GLOB = "checkpoint_[0-9]*"


def _in_folder(folder: Path, kind: BundleKind, weights: bool, source: str) -> Path:
    """The bundle (or, with `weights`, a checkpoint's weights) in a folder, a run folder or a checkpoint."""
    candidates = [folder / kind.file, folder / kind.folder / kind.file]
    # a run's storage folder: its latest checkpoint (checkpoint_<timestamp> names sort by time)
    checkpoints = sorted(folder.glob(CHECKPOINT_GLOB), reverse=True)
    candidates += [c / kind.file for c in checkpoints]
    if weights and kind.checkpoint_weights:
        candidates += [folder / kind.checkpoint_weights, *(c / kind.checkpoint_weights for c in checkpoints)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return found
    if kind.checkpoint_weights and any((c / kind.checkpoint_weights).is_file() for c in [folder, *checkpoints]):
        raise BundleError(folder, f"this is a training checkpoint ({kind.checkpoint_weights} holds weights only, without "
                                  "the preprocessing and channels the model was trained with); use the run's model bundle "
                                  f"instead: the MLflow run id, runs:/<run_id>/{kind.artifact}, or the {kind.file} it logged")
    raise BundleError(source, f"no {kind.name} bundle in this folder (looked for {kind.file}, {kind.folder}/{kind.file}"
                              f" and checkpoint_*/{kind.file})")


def resolve(source: str | os.PathLike, kind: BundleKind = MODEL, *, weights: bool = False,
            tracking_uri: str | None = None) -> Located:
    """The local file a user's `source` names (module docstring); BundleError naming the source otherwise.

    MLflow sources are downloaded from `tracking_uri` (default: MLFLOW_TRACKING_URI, else ./mlflow.db).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return Located(path, str(path))
    if path.is_dir():
        return Located(_in_folder(path, kind, weights, text), str(path))
    uri = tracking_uri or default_tracking_uri()
    match = _RUNS_URI.match(text)
    if match or RUN_ID.match(text):
        run_id = match["run"] if match else text
        artifact = (match["path"].strip("/") if match else "") or kind.artifact
        if artifact == kind.folder:
            artifact = kind.artifact
        elif not artifact.endswith(".pt"):
            artifact = f"{artifact}/{kind.file}"
        local = _download(text, uri, run_id, artifact)
        if local.is_dir():
            local = local / kind.file
        if not local.is_file():
            raise BundleError(text, f"MLflow run {run_id} in {uri} has no {kind.name} bundle at {artifact!r}")
        return Located(local, f"runs:/{run_id}/{artifact}", run_id)
    match = _MODELS_URI.match(text)
    if match:
        registered = _registered_source(text, uri, match["name"], match["version"], match["alias"])
        if not _RUNS_URI.match(registered):
            raise BundleError(text, f"its source {registered} is not an MLflow run's artifact (runs:/<run id>/...): "
                                    f"register the run's {kind.folder} folder")
        located = resolve(registered, kind, weights=weights, tracking_uri=uri)
        return Located(located.path, text, located.run_id)
    raise BundleError(text, "no such file or folder, and not an MLflow run id (32 hex digits), runs:/<run_id>/... or "
                            f"models:/<name>/<version or @alias> URI; expected a {kind.name} bundle ({kind.file}), a folder "
                            "holding one, or the training run that logged it")


def register_model(run_id: str, name: str, tracking_uri: str, aliases=()) -> str:
    """Register the model bundle MLflow run `run_id` logged (its `model` folder) as a new version of the registered
    model `name` (created when new), optionally under `aliases`; returns the version, which `resolve` then finds
    as models:/NAME/VERSION or models:/NAME@ALIAS."""
    _check_store(f"runs:/{run_id}", tracking_uri)
    registry = client(tracking_uri)
    try:
        if not registry.search_registered_models(filter_string=f"name = '{name}'"):
            registry.create_registered_model(name)
        version = registry.create_model_version(name, f"runs:/{run_id}/{MODEL.folder}", run_id=run_id).version
        for alias in aliases:
            registry.set_registered_model_alias(name, alias, version)
    except Exception as error:
        first = first_line(error) or type(error).__name__
        raise BundleError(f"runs:/{run_id}", f"could not register its model as {name!r} in {tracking_uri}: {first}") from error
    try:  # the card describes a version that exists either way: a failure here is reported, not raised
        nights = download_json(tracking_uri, run_id, f"{PER_NIGHT_ARTIFACTS}/summary.json")
        description, tags = model_card(registry.get_run(run_id), nights, name, str(version))
        registry.update_model_version(name, version, description=description)
        for key, value in tags.items():
            registry.set_model_version_tag(name, version, key, value)
    except Exception as error:
        log.warning("models:/%s/%s is registered, but its model card was not written (%s: %s)", name, version,
                    type(error).__name__, first_line(error))
    return str(version)


# ------------------------------------------------------------------------------------------------ load


def _looks_like_state_dict(blob) -> bool:
    return isinstance(blob, dict) and bool(blob) and all(isinstance(v, torch.Tensor) for v in blob.values())


# How a file torch.save wrote begins: a zip archive (its format since PyTorch 1.6) or, before, a pickle (PROTO
# opcode and protocol 2-5). Anything else is no PyTorch file at all, and is refused without unpickling a byte.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = tuple(bytes([0x80, p]) for p in (2, 3, 4, 5))
LEGACY_TORCH_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # what a pre-1.6 torch.save writes first


def _head(path, size: int) -> bytes:
    if hasattr(path, "read"):  # a file object (bundle bytes sent to a Ray task): read and rewind
        start = path.tell()
        head = path.read(size)
        path.seek(start)
        return head
    with open(path, "rb") as stream:
        return stream.read(size)


def _refused_object(error: Exception) -> str:
    """What torch's safe unpickler refused, without the rest of its message: that goes on to advise retrying with
    weights_only=False (or allowlisting the class), i.e. running whatever code the file holds."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it names {found[1]}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return found[1].strip().rstrip(".") if found else type(error).__name__


def load_file(path: str | os.PathLike, map_location="cpu"):
    """torch.load(weights_only=True) of a bundle or checkpoint file, its refusals as BundleErrors. Every file this
    project reads back with torch (bundles, checkpoint weights and states) is loaded here."""
    try:
        head = _head(path, len(LEGACY_TORCH_MAGIC))
    except OSError as error:
        raise BundleError(path, f"cannot be read ({type(error).__name__}: {error})") from error
    if not head.startswith(ZIP_MAGIC) and head[:2] not in PICKLE_PROTOCOLS:
        # torch would report random bytes or a JSON file as holding unsafe objects and suggest weights_only=False.
        raise BundleError(path, f"not a PyTorch model file: torch.save writes a zip archive, and this file "
                                f"{'is empty' if not head else f'begins with {head[:8]!r}'}; expected a distsleep "
                                "bundle (model.pt) or training checkpoint")
    if not head.startswith(ZIP_MAGIC) and not head.startswith(LEGACY_TORCH_MAGIC):
        raise BundleError(path, "not a PyTorch model file but a plain Python pickle (torch.save did not write it); "
                                "refused unread, since unpickling can run arbitrary code")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise BundleError(path, "refused: the file holds Python objects other than tensors and plain values "
                                f"({_refused_object(error)}; torch.load with weights_only=True does not load them), "
                                "and loading those can run arbitrary code; a distsleep bundle never holds any") from error
    except Exception as error:  # truncated zip, a zip archive torch did not write, ...
        raise BundleError(path, f"cannot be read as a bundle ({type(error).__name__}: {error})") from error


def read(path: str | os.PathLike, kind: BundleKind = MODEL) -> dict:
    """The bundle dict in `path`, checked to be of `kind` with every key it must hold."""
    bundle = load_file(path)
    if not isinstance(bundle, dict) or "format" not in bundle:
        if kind.checkpoint_weights and _looks_like_state_dict(bundle):
            raise BundleError(path, f"holds bare weights (a training checkpoint's {kind.checkpoint_weights}?), not a "
                                    f"{kind.name} bundle with its preprocessing and channels; use the run's bundle "
                                    f"(runs:/<run_id>/{kind.artifact})")
        raise BundleError(path, f"not a distsleep {kind.name} bundle (expected a dict with format {kind.format!r})")
    if bundle["format"] != kind.format:
        raise BundleError(path, f"bundle format {bundle['format']!r} is not supported here (a {kind.name} bundle is "
                                f"{kind.format!r})")
    missing = [k for k in kind.required if k not in bundle]
    if missing:
        raise BundleError(path, f"{kind.name} bundle lacks {missing}")
    return bundle


def weights(located: Located) -> dict:
    """The state dict of a model bundle or of a checkpoint's weights file."""
    blob = load_file(located.path)
    if isinstance(blob, dict) and "state_dict" in blob:
        return blob["state_dict"]
    if not _looks_like_state_dict(blob):
        raise BundleError(located.name, "holds neither a model bundle nor a state dict")
    return blob


def load_model(path: str | os.PathLike):
    """(model in eval mode on the CPU, bundle dict) from a model bundle file."""
    bundle = read(path, MODEL)
    if list(bundle["stages"]) != list(STAGE_NAMES):
        raise BundleError(path, f"bundle predicts stages {bundle['stages']}, this distsleep uses {list(STAGE_NAMES)}")
    config = dict(bundle["model_config"])
    expected = config.get("input_channels")
    if expected is not None and expected != len(bundle["channels"]):
        raise BundleError(path, f"model has {expected} input channel(s) but the bundle lists channels {bundle['channels']}")
    try:
        model = build_model(bundle["model"], config)
        model.load_state_dict(bundle["state_dict"], strict=True)
    except (LookupError, ValueError, TypeError, RuntimeError) as error:
        raise BundleError(path, f"cannot build model {bundle['model']!r} from the bundle: {error}") from error
    model.eval()
    return model, bundle


def map_roles(bundle: dict, available, where: str, source: str | os.PathLike = "model") -> tuple[tuple[str, ...], dict[str, str]]:
    """The channel roles to read from inputs that hold the roles `available` (`where` names them in messages):
    the bundle's own roles, or, for a role the inputs lack, another role filling the same model input slot
    (cross-dataset use: a model trained on SHHS C4-A1 read through Sleep-EDF's Fpz-Cz). Returns (roles,
    substituted {trained role: role read}); BundleError when a role has no stand-in."""
    available = set(available)
    slots = required_channels(bundle["model"])
    roles: list[str] = []
    substituted: dict[str, str] = {}
    for role in bundle["channels"]:
        if role in available:
            roles.append(role)
            continue
        slot = next((s for s in slots if role in s), ())
        alternative = next((r for r in slot if r in available and r not in roles), None)
        if alternative is None:
            raise BundleError(source, f"the model was trained on {bundle['preprocess'].get('source')} channel {role!r}, "
                                      f"which {where} lack(s), and its input slot accepts none of the roles there "
                                      f"(slot {list(slot)}; available {sorted(available)})")
        roles.append(alternative)
        substituted[role] = alternative
    return tuple(roles), substituted
