"""Channel roles and the EDF labels that carry them.

A role names what a signal *is* (C4-A1 EEG, left EOG, ...); the label is whatever a given file calls it.
Matching is exact on the normalised label (case-insensitive, surrounding whitespace ignored): picking "the
first label containing EEG" is the public-code bug that silently trains on C3-A2 instead of C4-A1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelRole:
    name: str
    description: str
    aliases: tuple[str, ...]  # exact labels seen in files, most common first
    unit: str  # physical unit after reading (EEG/EOG/EMG/ECG are always converted to uV)


def norm_label(label: str) -> str:
    """The form labels are compared in: upper case, single spaces, no surrounding whitespace."""
    return " ".join(label.strip().upper().split())


# SHHS (NSRR) roles. Aliases from NSRR/Luna alias tables and DESIGN.md §2.
SHHS_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_c4", "EEG C4-A1", ("EEG", "EEG1", "EEG 1"), "uV"),
    ChannelRole("eeg_c3", "EEG C3-A2", ("EEG(sec)", "EEG(SEC)", "EEG 2", "EEG2", "EEG sec", "EEG_2", "EEG_sec"), "uV"),
    ChannelRole("eog_l", "left EOG (E1)", ("EOG(L)", "E1", "EOGL"), "uV"),
    ChannelRole("eog_r", "right EOG (E2)", ("EOG(R)", "E2", "EOGR"), "uV"),
    ChannelRole("emg", "chin EMG", ("EMG", "EMG1", "CHIN"), "uV"),
    ChannelRole("ecg", "ECG", ("ECG", "ECG1", "EKG"), "uV"),
    ChannelRole("airflow", "oronasal airflow (thermistor)", ("AIRFLOW", "NEW AIR", "AIRFLOW2", "AUX"), ""),
    ChannelRole("thor", "thoracic effort (RIP)", ("THOR RES", "THOR"), ""),
    ChannelRole("abdo", "abdominal effort (RIP)", ("ABDO RES", "ABDO", "ABD"), ""),
    ChannelRole("sao2", "oxygen saturation", ("SaO2", "SPO2", "SAO2"), "%"),
    ChannelRole("pr", "pulse rate", ("PR", "H.R.", "HR"), "bpm"),
    ChannelRole("position", "body position", ("POSITION",), ""),
    ChannelRole("light", "light on/off", ("LIGHT",), ""),
    ChannelRole("ox_stat", "oximeter status", ("OX STAT", "OX STATUS"), ""),
)

# Sleep-EDF (PhysioNet sleep-cassette) roles.
SLEEPEDF_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_fpz_cz", "EEG Fpz-Cz", ("EEG Fpz-Cz",), "uV"),
    ChannelRole("eeg_pz_oz", "EEG Pz-Oz", ("EEG Pz-Oz",), "uV"),
    ChannelRole("eog", "horizontal EOG", ("EOG horizontal",), "uV"),
    ChannelRole("emg", "submental EMG (rectified envelope)", ("EMG submental",), "uV"),
    ChannelRole("resp", "oro-nasal respiration", ("Resp oro-nasal",), ""),
    ChannelRole("temp", "rectal temperature", ("Temp rectal",), "DegC"),
    ChannelRole("event", "event marker", ("Event marker",), ""),
)

ROLE_SETS: dict[str, tuple[ChannelRole, ...]] = {"shhs": SHHS_ROLES, "sleep-edf": SLEEPEDF_ROLES}

# The staging EEG each source's primary recipe uses.
PRIMARY_EEG_ROLE: dict[str, str] = {"shhs": "eeg_c4", "sleep-edf": "eeg_fpz_cz"}


def role_by_name(source: str, name: str) -> ChannelRole:
    for role in ROLE_SETS[source]:
        if role.name == name:
            return role
    known = ", ".join(r.name for r in ROLE_SETS[source])
    raise KeyError(f"unknown channel role {name!r} for source {source!r} (known: {known})")


def role_of_label(source: str, label: str) -> ChannelRole | None:
    """The role whose aliases contain `label` exactly (after normalisation), or None."""
    key = norm_label(label)
    for role in ROLE_SETS[source]:
        if any(norm_label(alias) == key for alias in role.aliases):
            return role
    return None


def resolve_roles(source: str, labels: list[str]) -> dict[str, str]:
    """Map role name -> the file's label for every role present among `labels` (first alias wins)."""
    found: dict[str, str] = {}
    for label in labels:
        role = role_of_label(source, label)
        if role is not None and role.name not in found:
            found[role.name] = label
    return found
