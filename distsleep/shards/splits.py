"""Subject-wise train/val/test splits: stable ones from a seeded hash of each subject's id, or a published
split read from a file.

Stable splits. Each subject gets two numbers in [0, 1) from SHA-256 of (seed, purpose, subject id):
* validation: the `n_val` subjects with the smallest validation number (at most a tenth of a small
  cohort, at least one);
* the others: train when their side number is below `train_fraction`, else test.
A subject's side never depends on who else is in the cohort, so growing or shrinking the cohort never
moves a subject between train and test. Validation has an exact size (the papers' 100), and an exact size
cannot be independent of the cohort: a newcomer whose validation number ranks among the n_val smallest
takes the place of the subject ranked n_val, which moves to its own fixed train/test side (and a leaver's
place is taken by the next in rank). With 100 of 5,791 SHHS1 subjects that happens to one existing
subject for about 1 in 58 subjects added; nobody else moves. Cohorts of fewer than ~10 subjects may have
the threshold leave train or test empty: then the subject closest to the threshold changes side, so that
both exist.

Published splits. A JSON object {"train": [...], "val": [...], "test": [...]} or lines "ID SPLIT" (space,
tab or comma separated; # comments), where an ID is a record id (shhs1-200001) or a subject id (200001).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from distsleep.config import SplitConfig
from distsleep.errors import SplitFileError

SPLITS = ("train", "val", "test")


def subject_number(subject: str, seed: int, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, subject) alone."""
    digest = hashlib.sha256(f"{seed}\0{purpose}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_size(n_subjects: int, n_val: int) -> int:
    """`n_val`, but at most a tenth of a small cohort (at least one; none below three subjects)."""
    return min(n_val, max(1, n_subjects // 10)) if n_subjects > 2 else 0


def stable_splits(subjects, config: SplitConfig) -> dict[str, str]:
    """subject -> "train" | "val" | "test" (see the module docstring)."""
    unique = sorted(set(subjects))
    by_rank = sorted(unique, key=lambda s: (subject_number(s, config.seed, "val"), s))
    validation = set(by_rank[:validation_size(len(unique), config.n_val)])
    side = {s: subject_number(s, config.seed, "side") for s in unique if s not in validation}
    split = {s: "val" for s in validation}
    split.update({s: "train" if u < config.train_fraction else "test" for s, u in side.items()})
    if len(side) >= 2:  # tiny cohorts: keep one subject on each side
        train = [s for s in side if split[s] == "train"]
        if not train:
            split[min(side, key=side.get)] = "train"
        elif len(train) == len(side):
            split[max(side, key=side.get)] = "test"
    return split


@dataclass(frozen=True)
class PublishedSplit:
    """A split file, parsed: id -> split, and the file's provenance."""

    path: str
    sha256: str
    assignment: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict:
        counts = {name: sum(v == name for v in self.assignment.values()) for name in SPLITS}
        return {"method": "file", "file": self.path, "sha256": self.sha256, "ids": counts}


def read_split_file(path: str | Path) -> PublishedSplit:
    """Parse a published split (JSON lists or "ID SPLIT" lines); SplitFileError names the file and the problem."""
    path = Path(path).expanduser().resolve()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SplitFileError(path, f"cannot read the split file: {error.strerror}") from error
    text = data.decode("utf-8", errors="replace")
    pairs: list[tuple[str, str]] = []
    if text.lstrip().startswith("{"):
        try:
            lists = json.loads(text)
        except json.JSONDecodeError as error:
            raise SplitFileError(path, f"not valid JSON ({error.msg}, line {error.lineno})") from error
        unknown = sorted(set(lists) - set(SPLITS))
        if unknown or not all(isinstance(v, list) for v in lists.values()):
            raise SplitFileError(path, f"expected lists under the keys {list(SPLITS)}, got keys {sorted(lists)}")
        pairs = [(str(i), name) for name, ids in lists.items() for i in ids]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p for p in re.split(r"[\s,]+", line) if p]
            if len(parts) != 2 or parts[1] not in SPLITS:
                raise SplitFileError(path, f"line {number}: expected 'ID SPLIT' with SPLIT one of {list(SPLITS)}, got {line!r}")
            pairs.append((parts[0], parts[1]))
    assignment: dict[str, str] = {}
    for identifier, name in pairs:
        if assignment.get(identifier, name) != name:
            raise SplitFileError(path, f"{identifier} is listed in both {assignment[identifier]} and {name}")
        assignment[identifier] = name
    if not assignment:
        raise SplitFileError(path, "the split file lists no ids")
    return PublishedSplit(str(path), hashlib.sha256(data).hexdigest(), assignment)


def published_splits(records: dict[str, str], published: PublishedSplit, allow_missing: bool) -> tuple[dict[str, str], list[str]]:
    """(record id -> split for the records the file places, ids the file names that the cohort lacks).

    `records` maps record id -> subject. A record is placed by its own id or by its subject's id; a person
    whose records the file puts in different splits is an error, and so are missing ids unless allowed.
    """
    subjects = set(records.values())
    placed: dict[str, str] = {}
    for record_id, subject in records.items():
        names = {published.assignment[i] for i in (record_id, subject) if i in published.assignment}
        if len(names) > 1:
            raise SplitFileError(published.path, f"{record_id} (subject {subject}) is listed in {sorted(names)}")
        if names:
            placed[record_id] = names.pop()
    by_subject: dict[str, set[str]] = {}
    for record_id, name in placed.items():
        by_subject.setdefault(records[record_id], set()).add(name)
    split_people = {s: sorted(n) for s, n in by_subject.items() if len(n) > 1}
    if split_people:
        raise SplitFileError(published.path, "records of one person in different splits: "
                             + "; ".join(f"{s}: {n}" for s, n in sorted(split_people.items())[:10]))
    missing = sorted(i for i in published.assignment if i not in records and i not in subjects)
    if missing and not allow_missing:
        raise SplitFileError(published.path, f"{len(missing)} id(s) the file names are not in the cohort "
                             f"(first: {', '.join(missing[:10])}); pass --allow-missing-split-ids to accept and list them")
    return placed, missing
