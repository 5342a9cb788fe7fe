"""User channel maps (luna's alias format) and the rule that picks each role's label in a file.

An alias file has one role per line: `role|label|label...` (luna: `alias` lines map a canonical name to
the labels seen in files). Blank lines and `#` comments are ignored; a leading `alias` keyword, as in a
luna parameter file, is accepted. Labels match case-insensitively with surrounding spaces ignored, the
same rule as the cohort tables.

Resolution (`resolve_labels`), for each requested role, in order:
1. the channel map: its labels in the order written (the first present in the file wins);
2. the cohort's own table when the cohort is known (today's exact-alias rule, file order);
3. with the cohort unknown: every cohort's table, labels all cohorts agree on. A label that means different
   roles in different cohorts (MESA `EEG1` = Fz-Cz, SHHS `EEG1` = C4-A1) is never used, and a file that has
   one (and no map entry for it) is refused for every role the map does not give, naming its labels and how
   to map them: such a label says the file's montage is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from distsleep.errors import InputError, MissingChannelError
from distsleep.sources.channels import ChannelRole, norm_label
from distsleep.sources.montages import COHORT_ROLES, known_roles

# (role, labels) pairs in file order: a hashable, order-keeping value that a frozen config can hold.
ChannelMap = tuple[tuple[str, tuple[str, ...]], ...]


class ChannelMapError(InputError):
    """An alias (channel map) file is unreadable or malformed."""


class AmbiguousChannelError(MissingChannelError):
    """A role could only be read from a label whose meaning depends on the cohort, and the cohort is unknown."""


def parse_channel_map(text: str, path: str | Path = "<channel map>") -> ChannelMap:
    """Parse alias-file text; ChannelMapError names the file and line of the first problem."""
    roles = known_roles()
    entries: list[tuple[str, tuple[str, ...]]] = []
    seen_roles: dict[str, int] = {}
    seen_labels: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.split(None, 1)[0].lower() == "alias" and "|" not in line.split(None, 1)[0]:
            line = line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else ""
        where = f"line {number}"
        if "|" not in line:
            raise ChannelMapError(path, f"{where}: {raw.strip()!r} is not 'role|label|label...' (no '|')")
        role, *labels = (part.strip() for part in line.split("|"))
        if role not in roles:
            raise ChannelMapError(path, f"{where}: unknown channel role {role!r} (known: {', '.join(sorted(roles))})")
        if role in seen_roles:
            raise ChannelMapError(path, f"{where}: role {role!r} is already mapped on line {seen_roles[role]}; "
                                        "list all its labels on one line")
        if not labels or any(not label for label in labels):
            raise ChannelMapError(path, f"{where}: role {role!r} has an empty label (write 'role|label|label...')")
        for label in labels:
            key = norm_label(label)
            if key in seen_labels:
                other, other_line = seen_labels[key]
                raise ChannelMapError(path, f"{where}: label {label!r} is already mapped to {other!r} on line "
                                            f"{other_line}; a label can carry only one role")
            seen_labels[key] = (role, number)
        seen_roles[role] = number
        entries.append((role, tuple(labels)))
    if not entries:
        raise ChannelMapError(path, "no aliases: expected lines 'role|label|label...'")
    return tuple(entries)


def read_channel_map(path: str | Path) -> ChannelMap:
    """Read and parse an alias file (what `--channel-map FILE` names)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChannelMapError(path, "channel map file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChannelMapError(path, f"cannot read channel map: {exc}") from None
    return parse_channel_map(text, path)


def channel_map_to_dict(channel_map: ChannelMap) -> dict[str, list[str]]:
    return {role: list(labels) for role, labels in channel_map}


def channel_map_from_dict(data: Mapping[str, Sequence[str]]) -> ChannelMap:
    return tuple((role, tuple(labels)) for role, labels in data.items())


def _label_meanings(cohort: str | None) -> dict[str, set[str]]:
    """Normalised label -> the roles it carries in the cohort's table (every cohort's, when unknown)."""
    tables = [COHORT_ROLES[cohort]] if cohort is not None else list(COHORT_ROLES.values())
    meanings: dict[str, set[str]] = {}
    for table in tables:
        for role in table:
            for alias in role.aliases:
                meanings.setdefault(norm_label(alias), set()).add(role.name)
    return meanings


def _cohorts_reading(label: str) -> str:
    """'shhs: eeg_c4, mesa: eeg_fz_cz' for a label listed by several cohorts."""
    key = norm_label(label)
    parts = [f"{cohort}: {role.name} ({role.description})" for cohort, table in COHORT_ROLES.items()
             for role in table if any(norm_label(a) == key for a in role.aliases)]
    return "; ".join(parts)


def resolve_labels(path: str | Path, labels: Sequence[str], roles: Sequence[str], cohort: str | None,
                   channel_map: ChannelMap | None = None) -> dict[str, str]:
    """role -> the file's label for every requested role (rules in the module docstring).

    `path` is the recording, named in errors; `labels` its signal labels in file order; `cohort` a key of
    COHORT_ROLES or None (unknown). Raises KeyError for a role no cohort defines, MissingChannelError when a
    role is absent and AmbiguousChannelError when it could only come from a cohort-dependent label.
    """
    catalogue = known_roles()
    unknown = [r for r in roles if r not in catalogue]
    if unknown:
        raise KeyError(f"unknown channel role {unknown[0]!r} (known: {', '.join(sorted(catalogue))})")
    if cohort is not None and cohort not in COHORT_ROLES:
        raise KeyError(f"unknown cohort {cohort!r} (known: {', '.join(COHORT_ROLES)})")
    mapped = dict(channel_map or ())
    claimed = {norm_label(label) for labels_ in mapped.values() for label in labels_}
    meanings = _label_meanings(cohort)
    present = {norm_label(label): label for label in reversed(labels)}  # first occurrence wins

    listed = ", ".join(repr(label) for label in labels) or "(none)"
    found: dict[str, str] = {}
    for role in roles:
        choice = next((present[norm_label(a)] for a in mapped.get(role, ()) if norm_label(a) in present), None)
        if choice is not None:
            found[role] = choice
    # With the cohort unknown, one cohort-dependent label means the file's montage is not known either, so no
    # role is taken from the tables (EEG3 is C4-M1 in MESA, but a file that also writes EEG1 may not be MESA).
    ambiguous = [label for label in labels if norm_label(label) not in claimed
                 and len(meanings.get(norm_label(label), ())) > 1]
    unmapped = [r for r in roles if r not in found]
    if ambiguous and unmapped:
        readings = "; ".join(f"{label!r} is {_cohorts_reading(label)}" for label in ambiguous)
        raise AmbiguousChannelError(
            path, f"cannot tell which signal is {', '.join(unmapped)}: the cohort of this recording is not known and "
                  f"its label(s) mean different channels in different cohorts ({readings}); signals present: "
                  f"{listed}. Name the cohort (e.g. cohort=mesa) or give a channel map file with a line such as "
                  f"'{unmapped[0]}|<the label that carries it>'")
    for role in unmapped:
        choice = next((label for label in labels
                       if norm_label(label) not in claimed and meanings.get(norm_label(label)) == {role}), None)
        if choice is not None:
            found[role] = choice
    missing = [r for r in roles if r not in found]
    if not missing:
        return found
    details = "; ".join(_describe_missing(catalogue[r], cohort, mapped.get(r, ())) for r in missing)
    raise MissingChannelError(path, f"missing channel role {details}; signals present: {listed}")


def _describe_missing(role: ChannelRole, cohort: str | None, mapped: Sequence[str]) -> str:
    if cohort is not None:
        table = next((r for r in COHORT_ROLES[cohort] if r.name == role.name), None)
        aliases = list(mapped) + list(table.aliases if table else ())
    else:
        aliases = list(mapped) + sorted({a for t in COHORT_ROLES.values() for r in t if r.name == role.name
                                         for a in r.aliases})
    accepted = ", ".join(repr(a) for a in aliases) if aliases else "none in this cohort's table; map it with a channel map file"
    return f"{role.name} ({role.description}; accepted labels: {accepted})"
