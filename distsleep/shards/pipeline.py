"""The preprocessing job: every recording of a dataset -> shards, on a Ray cluster, resumably.

One Ray task per recording (bounded CPUs and memory each). Ray retries a task whose worker process died
(system failure); a recording that is itself bad (unreadable, no C4 channel, no annotations) fails once,
lands in failures.jsonl with a message naming the file, and the others go on. A rerun skips recordings
whose summary says they were done with the same config from the same input files (and whose shard still
has its sha256), so a job killed at any point — driver or worker — completes on the next run, and the bytes
of every shard depend only on its inputs and config.

One job per output folder: the driver holds OUT/.preprocess.lock for the whole run (a second job into the
same --out is refused and told who holds it), and a folder whose manifest was made with another
preprocessing or split config, another split file's contents or another input root, or that holds records
this run would leave out (a smaller --limit, recordings gone from the root), is refused unless `overwrite`
says to replace it: two datasets never mix, and a dataset never shrinks without being told to. Two
recordings with the same record id (the id names the shard, the marker and the person) are both failures
naming both files: which one a rerun kept would otherwise change from run to run. So are records holding the
same signals under different ids (a night copied under another person's id would be two people to the split):
each record's summary carries a fingerprint of its quantised signals (`convert.signal_fingerprint`), compared
when the manifest is assembled, and every copy fails naming the others.

OUT may be an object-store prefix (s3://bucket/cohort): the Ray tasks then write each shard and marker
straight to the bucket (`store.py`), the lock is a lease object (`locks.py`), and the manifest is written
last, so a reader never finds a manifest naming shards that are not there yet.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.errors import InputError, first_line
from distsleep.atomic import TEMP_MARK
from distsleep.locks import LockHeld, exclusive_lock
from distsleep.runtime import connect_ray
from distsleep.shards.convert import RecordSource, completed_summary, convert_record
from distsleep.shards.manifest import FAILURES_NAME, MANIFEST_NAME, build_manifest, selection_reason
from distsleep.shards.splits import published_splits, read_split_file
from distsleep.sources.subjects import subject_of, visit_of
from distsleep.stages import STAGE_NAMES
from distsleep.store import check_no_credentials, display, is_url, join, make_folder, read_json, remove, write_json


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None  # Ray address; default RAY_ADDRESS, else a local embedded cluster
    cpus_per_task: float = 1.0
    memory_per_task_mb: int = 1500  # a 9-h SHHS night peaks well under 1 GB in our path
    max_retries: int = 3  # retries after a worker process dies (system failures only)


@dataclass
class PreprocessResult:
    manifest: dict
    converted: int
    skipped: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.manifest["records"])


def discover(config: PreprocessConfig, root: str | Path, limit: int | None = None) -> list[RecordSource]:
    if config.source in ("shhs", "nsrr"):
        from distsleep.sources.shhs import find_nsrr_pairs as find
    else:
        from distsleep.sources.sleepedf import find_sleepedf_pairs as find
    sources = [RecordSource(rid, str(sig), str(ann) if ann else None) for rid, sig, ann in find(root)]
    if not sources:
        raise FileNotFoundError(f"{root}: no {config.source} recordings found (expected the "
                                + ("NSRR polysomnography/edfs/... layout)" if config.source != "sleep-edf" else "SC4*-PSG.edf files)"))
    return sources[:limit] if limit else sources


def select_visits(sources: list[RecordSource], source: str, split: SplitConfig,
                  root: str | Path) -> tuple[list[RecordSource], list[dict]]:
    """(the recordings of the selected visits, the others as excluded entries); an InputError naming `root`
    when a requested visit has no recording, or none is left."""
    found = sorted({str(visit_of(s.record_id, source)) for s in sources})
    absent = [v for v in split.visits if v not in found]
    if absent:
        raise InputError(root, f"no recordings of visit(s) {', '.join(absent)}; visits found: {', '.join(found)}")
    kept, left_out = [], []
    for s in sources:
        reason = selection_reason(s.record_id, source, split)
        if reason is None:
            kept.append(s)
        else:
            left_out.append({"record_id": s.record_id, "reason": reason})
    if not kept:
        raise InputError(root, f"no recording left after the visit selection (visits found: {', '.join(found)}; "
                               f"{left_out[0]['reason']})")
    return kept, left_out


def convert_task(source: RecordSource, config: PreprocessConfig, out: str) -> dict:
    """Body of the Ray task: a result dict either way, so bad input never kills the job."""
    try:
        return {"status": "ok", "summary": convert_record(source, config, out)}
    except InputError as error:
        return {"status": "failed", "record_id": source.record_id, "error": error.kind, "message": str(error)}
    except Exception as error:  # a bug or an unforeseen file problem: report it, keep the rest going
        return {"status": "failed", "record_id": source.record_id, "error": type(error).__name__,
                "message": f"{source.signal_path}: {error}", "traceback": traceback.format_exc(limit=3)}


LOCK_NAME = ".preprocess.lock"


class OutputConflict(RuntimeError):
    """The output folder is in use by another job or holds a dataset made with another config."""


def _clean_stale_temporaries(out: str) -> None:
    """Temporary files of a killed run are garbage: their final names were never written. Only called under
    the folder's lock, so no running job's temporaries are among them. (Object stores have none: an upload
    cut short never becomes an object; S3 keeps its parts until a lifecycle rule aborts them, see README.)"""
    if is_url(out):
        return
    for pattern in (f"shards/.*{TEMP_MARK}*", f"records/.*{TEMP_MARK}*", f".*{TEMP_MARK}*"):
        for path in Path(out).glob(pattern):
            path.unlink(missing_ok=True)


def duplicate_ids(sources: list[RecordSource]) -> tuple[list[RecordSource], list[dict]]:
    """(the recordings whose record id is theirs alone, one failure per id that several recordings share)."""
    by_id: dict[str, list[RecordSource]] = {}
    for source in sources:
        by_id.setdefault(source.record_id, []).append(source)
    unique = [s for s in sources if len(by_id[s.record_id]) == 1]
    failures = [{"record_id": rid, "error": "DuplicateRecordId",
                 "message": f"{', '.join(s.signal_path for s in copies)}: {len(copies)} recordings share the record id "
                            f"{rid}; none of them is converted (the id names the shard and the person): keep one"}
                for rid, copies in sorted(by_id.items()) if len(copies) > 1]
    return unique, failures


def duplicate_signals(summaries: list[dict], signal_paths: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(the summaries whose signals are theirs alone, one failure per record whose signal fingerprint another record
    shares). One night under two record ids (a recording copied under another name) would be two people to the
    split, so it could be trained on and tested on: every copy fails, naming the others, and none is guessed to be
    the original. `signal_paths` (record id -> recording) names the files. Summaries written by a version before
    fingerprints (no "signal_fingerprint") are not compared: such folders resume as before, unchecked."""
    by_print: dict[str, list[str]] = {}
    for summary in summaries:
        if summary.get("signal_fingerprint"):
            by_print.setdefault(summary["signal_fingerprint"], []).append(summary["record_id"])
    copies = {rid: sorted(ids) for ids in by_print.values() if len(ids) > 1 for rid in ids}
    failures = []
    for rid, ids in sorted(copies.items()):
        others = [o for o in ids if o != rid]
        failures.append({"record_id": rid, "error": "DuplicateSignals",
                         "message": f"{signal_paths.get(rid, rid)}: holds the same signals as {', '.join(others)} "
                                    f"({', '.join(signal_paths.get(o, o) for o in others)}): one night under "
                                    f"{len(ids)} record ids would count as {len(ids)} people in the splits; none of "
                                    "them goes into the manifest: keep one recording and rerun"})
    return [s for s in summaries if s["record_id"] not in copies], failures


def input_root(root: str | Path) -> str:
    """The input root as the manifest records it (absolute), to tell another cohort from this one."""
    return str(Path(root).expanduser().resolve())


def check_same_dataset(out: str, config: PreprocessConfig, split: SplitConfig, *, root: str | Path | None = None,
                       published=None, records: list[str] | None = None) -> None:
    """Refuse to add to a folder whose manifest was built with another preprocessing or split config, another
    split file's contents (`published`), another input `root`, or that lists records not among `records` (the
    record ids this run would put in it). Without `root` / `records`, only the configs are compared."""
    manifest = join(out, MANIFEST_NAME)
    try:
        existing = read_json(manifest)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise OutputConflict(f"{manifest}: unreadable ({error}); remove it or pass --overwrite") from error
    differences = []
    if existing.get("config_hash") != config.content_hash():
        before = existing.get("config", {}).get("preprocess", {})
        differences += [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in config.to_dict().items() if before.get(k) != v]
    before_split = existing.get("config", {}).get("split", {})
    differences += [f"split {k}: {before_split.get(k)!r} -> {v!r}" for k, v in split.to_dict().items()
                    if before_split.get(k) != v]
    sha = existing.get("split", {}).get("sha256")
    if published is not None and sha and sha != published.sha256:
        differences.append(f"the split file {published.path} changed (sha256 {sha[:12]} -> {published.sha256[:12]})")
    before_root = existing.get("inputs", {}).get("root")
    if root is not None and before_root and before_root != input_root(root):
        differences.append(f"input root: {before_root} -> {input_root(root)}")
    if differences:
        raise OutputConflict(f"{out} holds shards made with another config ({'; '.join(differences)}); "
                             "choose another --out, or pass --overwrite to replace that dataset")
    left_out = sorted(set(existing.get("records", {})) - set(records)) if records is not None else []
    if left_out:
        raise OutputConflict(f"{out} holds {len(left_out)} record(s) this run would leave out of its manifest (e.g. "
                             f"{', '.join(left_out[:3])}: a smaller --limit, or recordings no longer under the root); "
                             "choose another --out, or pass --overwrite to rebuild that dataset without them")


def run_preprocess(root: str | Path, out: str | Path, config: PreprocessConfig, split: SplitConfig,
                   limit: int | None = None, cluster: ClusterOptions = ClusterOptions(), progress: bool = True,
                   overwrite: bool = False) -> PreprocessResult:
    """Preprocess every recording under `root` into `out`, a folder or an object-store prefix (s3://bucket/...;
    see the module docstring). Raises OutputConflict when another job holds `out` or (unless `overwrite`)
    `out` holds a dataset made with another config."""
    check_no_credentials(str(out))
    out = display(out)
    make_folder(out)
    try:
        with exclusive_lock(join(out, LOCK_NAME), f"the output folder {out}",
                            "wait for that job to finish or choose another --out"):
            if not overwrite:  # the configs first (cheap); the records once the recordings are found
                check_same_dataset(out, config, split)
            return _run_locked(root, out, config, split, limit, cluster, progress, overwrite)
    except LockHeld as error:
        raise OutputConflict(str(error)) from None


def _run_locked(root: str | Path, out: str, config: PreprocessConfig, split: SplitConfig, limit: int | None,
                cluster: ClusterOptions, progress: bool, overwrite: bool) -> PreprocessResult:
    import ray

    t0 = time.perf_counter()
    # A published split is read (and refused) before anything is converted.
    published = read_split_file(split.split_file) if split.split_file else None
    sources, duplicated = duplicate_ids(discover(config, root))
    sources, not_selected = select_visits(sources, config.source, split, root)
    sources = sources[:limit] if limit else sources
    if published is not None:  # ids the file names that no recording has: refused before converting anything
        published_splits({s.record_id: subject_of(s.record_id, config.source) for s in sources}, published,
                         split.allow_missing_split_ids)
    if not overwrite:
        check_same_dataset(out, config, split, root=root, published=published,
                           records=[s.record_id for s in sources] + [d["record_id"] for d in duplicated])
    if overwrite:  # the dataset being replaced stops being one before any of its shards changes
        for name in (MANIFEST_NAME, FAILURES_NAME):
            remove(join(out, name))
    make_folder(join(out, "shards"))
    _clean_stale_temporaries(out)
    config_hash = config.content_hash()

    summaries: dict[str, dict] = {}
    todo: list[RecordSource] = []
    for source in sources:
        done = completed_summary(out, source, config_hash)
        if done is None:
            todo.append(source)
        else:
            summaries[source.record_id] = done
    skipped = len(summaries)

    failures: list[dict] = list(duplicated)
    if todo:
        connect_ray(cluster.address)
        task = ray.remote(convert_task).options(
            num_cpus=cluster.cpus_per_task,
            memory=cluster.memory_per_task_mb * 1024 * 1024,
            max_retries=cluster.max_retries,
            retry_exceptions=False,
        )
        pending = {task.remote(source, config, out): source for source in todo}
        bar = tqdm(total=len(sources), initial=skipped, desc="preprocess", unit="rec", disable=not progress)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            source = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # the task's worker died more often than max_retries
                result = {"status": "failed", "record_id": source.record_id, "error": type(error).__name__,
                          "message": f"{source.signal_path}: worker failed {cluster.max_retries + 1} times: {first_line(error)}"}
            if result["status"] == "ok":
                summaries[source.record_id] = result["summary"]
            else:
                failures.append({k: v for k, v in result.items() if k != "status"})
            bar.update()
            bar.set_postfix(failed=len(failures))
        bar.close()

    # From the summaries (converted now or before), so a rerun compares every record without reading a shard.
    unique, copies = duplicate_signals(list(summaries.values()), {s.record_id: s.signal_path for s in sources})
    failures += copies
    manifest = build_manifest(unique, failures, config, split, published, not_selected, root=input_root(root))
    # The manifest last: a dataset is complete (and usable) only once it is there.
    write_json(join(out, FAILURES_NAME), sorted(failures, key=lambda f: f["record_id"]), lines=True)
    write_json(join(out, MANIFEST_NAME), manifest)
    return PreprocessResult(manifest=manifest, converted=len(summaries) - skipped, skipped=skipped,
                            failures=failures, seconds=time.perf_counter() - t0)


def format_summary(result: PreprocessResult, out: str | Path) -> str:
    manifest = result.manifest
    records = manifest["records"].values()
    n_bytes = sum(r["bytes"] for r in records)
    n_epochs = sum(r["n_epochs"] for r in records)
    stages = {s: sum(r["stages"][s] for r in records) for s in (*STAGE_NAMES, "unscored")}
    lines = [
        f"records: {result.ok} in the manifest ({result.converted} converted, {result.skipped} already done), "
        f"{len(result.failures)} failed, {len(manifest['excluded']) - len(result.failures)} excluded by subset",
        "splits: " + "  ".join(f"{k} {v['records']}" for k, v in manifest["totals"].items()),
        "epochs per stage: " + "  ".join(f"{k} {v}" for k, v in stages.items()),
        f"bytes: {n_bytes / 1e6:.1f} MB in shards, {n_bytes / max(1, n_epochs):.0f} B per epoch; "
        f"{result.seconds:.1f} s ({(result.converted / result.seconds if result.seconds else 0):.2f} records/s converted)",
        f"manifest: {join(display(out), MANIFEST_NAME)}",
    ]
    for failure in result.failures:
        lines.append(f"FAILED {failure['record_id']}: {failure['error']}: {failure['message']}")
    if result.failures:
        lines.append(f"failures: {join(display(out), FAILURES_NAME)}")
    return "\n".join(lines)
