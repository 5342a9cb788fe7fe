"""The evaluation protocol of the manifest: a subject is a person, SHHS subsets are SHHS1, splits are stable
under a growing cohort, and a published split is reproduced exactly. Pure functions on summaries: no Ray."""

from __future__ import annotations

import json
import random

import pytest

from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.shards.manifest import build_manifest, seen_people

STAGES = {"W": 10, "N1": 2, "N2": 20, "N3": 5, "REM": 8, "unscored": 0}


def _summary(record_id: str) -> dict:
    """A converted record's summary as the converter writes it (its old `subject` was the record id)."""
    return {"record_id": record_id, "subject": record_id, "shard": f"shards/{record_id}.tar", "sha256": "0" * 64,
            "bytes": 1000, "n_epochs": 45, "stages": dict(STAGES), "events": {}, "channels": [], "kept_epochs": [0, 45]}


def _manifest(record_ids, split: SplitConfig = SplitConfig(), source: str = "shhs", published=None) -> dict:
    extra = (published,) if published is not None else ()
    return build_manifest([_summary(r) for r in record_ids], [], PreprocessConfig(source=source), split, *extra)


def _splits(manifest: dict) -> dict[str, str]:
    return {rid: r["split"] for rid, r in manifest["records"].items()}


# --------------------------------------------------------------------------------------- one person, one split


def test_visits_of_one_nsrrid_share_a_split_and_subject():
    ids = [f"shhs{v}-2{n:05d}" for n in range(1, 61) for v in (1, 2)]
    manifest = _manifest(ids)
    records = manifest["records"]
    for n in range(1, 61):
        one, two = records[f"shhs1-2{n:05d}"], records[f"shhs2-2{n:05d}"]
        assert one["subject"] == two["subject"] == f"2{n:05d}"
        assert (one["visit"], two["visit"]) == ("shhs1", "shhs2")
        assert one["split"] == two["split"], n
    assert {r["split"] for r in records.values()} == {"train", "val", "test"}


def test_sleep_edf_nights_of_one_subject_share_a_split():
    ids = [f"{study}{s:02d}{night}{suffix}" for study, suffix in (("SC4", "E0"), ("ST7", "J0")) for s in range(30)
           for night in (1, 2)]
    manifest = _manifest(ids, source="sleep-edf")
    by_subject: dict[str, set] = {}
    for rid, r in manifest["records"].items():
        assert r["subject"] == rid[:5] and r["visit"] == f"night{rid[5]}"
        by_subject.setdefault(r["subject"], set()).add(r["split"])
    assert len(by_subject) == 60 and all(len(s) == 1 for s in by_subject.values())


def test_shhs_subsets_never_hold_shhs2_and_visit_selects():
    ids = [f"shhs{v}-2{n:05d}" for n in range(1, 31) for v in (1, 2)]
    for subset in ("shhs-5791", "shhs-5463"):
        manifest = _manifest(ids, SplitConfig(subset=subset))
        assert manifest["records"] and all(r.startswith("shhs1-") for r in manifest["records"])
        reasons = {e["record_id"]: e["reason"] for e in manifest["excluded"]}
        assert sorted(reasons) == sorted(i for i in ids if i.startswith("shhs2-"))
        assert all("not an SHHS1 record" in reason for reason in reasons.values())
    only_two = _manifest(ids, SplitConfig(visits=("shhs2",)))
    assert sorted(only_two["records"]) == sorted(i for i in ids if i.startswith("shhs2-"))
    assert only_two["config"]["split"]["visits"] == ["shhs2"]
    with pytest.raises(ValueError, match="SHHS1 cohort"):
        SplitConfig(subset="shhs-5791", visits=("shhs2",))


# --------------------------------------------------------------------------------------------- stable splits


def test_adding_a_subject_moves_nobody():
    """The issue's example: one subject added to a 50-subject cohort moved 11 others (2 from train to test)."""
    ids = [f"shhs1-2{n:05d}" for n in range(1, 51)]
    before = _splits(_manifest(ids))
    after = _splits(_manifest(ids + ["shhs1-200051"]))
    assert {rid: after[rid] for rid in before} == before


def test_growing_and_shrinking_never_moves_anyone_between_train_and_test():
    """Train/test sides depend on each subject's own id only; validation keeps its exact size, so a newcomer
    entering it displaces exactly one subject (to that subject's own side) and nobody else moves."""
    from distsleep.shards.splits import stable_splits

    rng = random.Random(0)
    pool = [f"{n:06d}" for n in rng.sample(range(200000, 206000), 1500)]
    config = SplitConfig(n_val=100)
    cohort = pool[:300]
    current = stable_splits(cohort, config)
    for size in (320, 1200, 1201, 1500, 1000, 400):  # grow and shrink
        cohort = pool[:size]
        new = stable_splits(cohort, config)
        staying = set(current) & set(new)
        assert not [s for s in staying if {current[s], new[s]} == {"train", "test"}]
        moved = [s for s in staying if current[s] != new[s]]
        assert all("val" in (current[s], new[s]) for s in moved)
        entered_val = {s for s in new if new[s] == "val" and s not in current}
        left_val = {s for s in current if current[s] == "val" and s not in new}
        n_val_old = sum(v == "val" for v in current.values())
        n_val_new = sum(v == "val" for v in new.values())
        assert len(moved) <= len(entered_val) + len(left_val) + abs(n_val_new - n_val_old)
        current = new
    big = stable_splits([f"{n:06d}" for n in range(200001, 205792)], config)  # 5,791 subjects
    counts = {name: sum(v == name for v in big.values()) for name in ("train", "val", "test")}
    assert counts["val"] == 100 and abs(counts["train"] / (counts["train"] + counts["test"]) - 0.7) < 0.02
    # Another seed is another split; tiny cohorts still get every split.
    assert stable_splits(pool[:300], SplitConfig(seed=1)) != stable_splits(pool[:300], config)
    for n in range(3, 12):
        assert set(stable_splits(pool[:n], config).values()) == {"train", "val", "test"}, n
    assert _manifest([f"shhs1-2{n:05d}" for n in range(1, 11)])["split"]["method"] == "stable-hash"


# ------------------------------------------------------------------------------------------ published splits


def test_split_file_is_reproduced_exactly_with_provenance(tmp_path):
    from distsleep.errors import SplitFileError
    from distsleep.shards.splits import read_split_file

    ids = [f"shhs{v}-2{n:05d}" for n in range(1, 13) for v in (1, 2)]
    wanted = {"train": ["200001", "shhs1-200002", "shhs2-200002", "200003", "200004", "200005", "200006"],
              "val": ["200007", "shhs1-200008"], "test": ["200009", "200010", "200011"]}
    path = tmp_path / "published.json"
    path.write_text(json.dumps(wanted))
    published = read_split_file(path)
    split = SplitConfig(split_file=str(path))
    manifest = _manifest(ids, split, published=published)
    expected = {}
    for name, listed in wanted.items():
        for i in listed:
            for rid in ids:
                if rid == i or rid.endswith("-" + i):
                    expected[rid] = name
    assert _splits(manifest) == expected  # shhs2-200008 and 200012 are not named: left out
    reasons = {e["record_id"]: e["reason"] for e in manifest["excluded"]}
    assert set(reasons) == {"shhs2-200008", "shhs1-200012", "shhs2-200012"}
    assert all("not in the split file" in r for r in reasons.values())
    import hashlib

    assert manifest["split"] == {"method": "file", "file": str(path.resolve()), "missing_ids": [],
                                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                 "ids": {"train": 7, "val": 2, "test": 3}}
    # The same split as "ID SPLIT" lines.
    lines = tmp_path / "published.txt"
    lines.write_text("# published\n" + "".join(f"{i},{name}\n" for name, listed in wanted.items() for i in listed))
    assert _splits(_manifest(ids, split, published=read_split_file(lines))) == expected

    # Ids the cohort lacks: refused, or accepted and listed.
    wanted["test"].append("299999")
    path.write_text(json.dumps(wanted))
    with pytest.raises(SplitFileError, match="299999"):
        _manifest(ids, split, published=read_split_file(path))
    allowed = _manifest(ids, SplitConfig(split_file=str(path), allow_missing_split_ids=True), published=read_split_file(path))
    assert allowed["split"]["missing_ids"] == ["299999"] and _splits(allowed) == expected
    # One person in two splits, or a malformed file: refused, naming the file.
    path.write_text(json.dumps({"train": ["shhs1-200001"], "test": ["shhs2-200001"]}))
    with pytest.raises(SplitFileError, match="different splits"):
        _manifest(ids, split, published=read_split_file(path))
    path.write_text(json.dumps({"train": ["200001"], "validation": ["200002"]}))
    with pytest.raises(SplitFileError, match=str(path)):
        read_split_file(path)


def test_a_person_seen_in_training_is_found_in_any_nights_and_only_in_their_cohort():
    manifest = {"config": {"preprocess": {"source": "shhs"}},
                "records": {"shhs1-200001": {"split": "test"}, "shhs1-200002": {"split": "val"},
                            "mros-visit1-200003": {"split": "test"}, "shhs1-200004": {"split": "train"}}}
    # SHHS2 of a test person and the same night of a validation person are found; nsrrid 200003 of SHHS is not
    # MrOS participant 200003, and a training person is no leak.
    seen = seen_people(manifest, ["shhs2-200001", "shhs1-200002", "shhs1-200003", "shhs2-200004"])
    assert seen == {"val": ["shhs1-200002"], "test": ["shhs1-200001"]}
    sleep_edf = {"config": {"preprocess": {"source": "sleep-edf"}},
                 "records": {"SC4011E0": {"split": "test"}, "SC4021E0": {"split": "test"}}}
    assert seen_people(sleep_edf, ["SC4012E0"]) == {"val": [], "test": ["SC4011E0"]}
