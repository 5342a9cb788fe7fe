"""Per-cohort alias tables: which EDF label carries which channel role in each NSRR cohort.

Why per cohort: the same label means different signals in different cohorts. MESA's `EEG1` is Fz-Cz and
its `EEG2` Cz-Oz, while SHHS files that write `EEG1`/`EEG2` mean C4-A1/C3-A2; one merged table would read
a MESA night through the wrong electrodes without a word. So each cohort has its own table, and a label
whose meaning differs between tables is used only when the cohort is known or a channel map names it
(distsleep.sources.channel_map).

Role names are shared across cohorts (C4-M1 and C4-A1 are the same derivation: M1/A1 both name the left
mastoid), so a model trained on one cohort's `eeg_c4` reads another cohort's `eeg_c4`. Only derivations
documented for a cohort are listed; single-electrode labels (`C4`, `A1`) are never taken for a derivation.
"""

from __future__ import annotations

import re

from distsleep.sources.channels import SHHS_ROLES, SLEEPEDF_ROLES, ChannelRole

# MESA sleep exam (NSRR `mesa`, Compumedics Somte PSG). EEG1/EEG2/EEG3 = Fz-Cz, Cz-Oz, C4-M1 and EOG-L/EOG-R
# = E1-FPz/E2-FPz as U-Time's MESA preparation renames them (github.com/perslev/U-Time,
# resources/usleep_dataset_prep/mesa.md); EMG/EKG/Flow/Thor/Abdo/SpO2/HR/Pos follow the MESA EDF signal
# list on sleepdata.org (uncertain: not every MESA EDF carries all of them).
MESA_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_fz_cz", "EEG Fz-Cz", ("EEG1",), "uV"),
    ChannelRole("eeg_cz_oz", "EEG Cz-Oz", ("EEG2",), "uV"),
    ChannelRole("eeg_c4", "EEG C4-M1", ("EEG3",), "uV"),
    ChannelRole("eog_l", "left EOG (E1-FPz)", ("EOG-L",), "uV"),
    ChannelRole("eog_r", "right EOG (E2-FPz)", ("EOG-R",), "uV"),
    ChannelRole("emg", "chin EMG", ("EMG",), "uV"),
    ChannelRole("ecg", "ECG", ("EKG",), "uV"),
    ChannelRole("airflow", "oronasal airflow (thermistor)", ("Flow",), ""),
    ChannelRole("thor", "thoracic effort (RIP)", ("Thor",), ""),
    ChannelRole("abdo", "abdominal effort (RIP)", ("Abdo",), ""),
    ChannelRole("sao2", "oxygen saturation", ("SpO2",), "%"),
    ChannelRole("pr", "pulse rate", ("HR",), "bpm"),
    ChannelRole("position", "body position", ("Pos",), ""),
)

# MrOS sleep visits 1 and 2 (NSRR `mros`): central EEG and EOG referenced to the contralateral mastoid, as
# U-Time's MrOS preparation reads them (C3-M2, C4-M1, E1-M2, E2-M1; resources/usleep_dataset_prep/mros.md).
# Uncertain: some MrOS EDFs are reported to write the A1/A2 spelling; both are listed.
MROS_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_c4", "EEG C4-M1", ("C4-M1", "C4-A1"), "uV"),
    ChannelRole("eeg_c3", "EEG C3-M2", ("C3-M2", "C3-A2"), "uV"),
    ChannelRole("eog_l", "left EOG (E1-M2)", ("E1-M2", "LOC-A2"), "uV"),
    ChannelRole("eog_r", "right EOG (E2-M1)", ("E2-M1", "ROC-A1"), "uV"),
)

# Cleveland Family Study visit 5 (NSRR `cfs`): C3-A2, C4-A1, LOC-A2, ROC-A1 (U-Time,
# resources/usleep_dataset_prep/cfs.md). Note for splits: CFS subjects are related (families).
CFS_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_c4", "EEG C4-A1", ("C4-A1",), "uV"),
    ChannelRole("eeg_c3", "EEG C3-A2", ("C3-A2",), "uV"),
    ChannelRole("eog_l", "left EOG (LOC-A2)", ("LOC-A2",), "uV"),
    ChannelRole("eog_r", "right EOG (ROC-A1)", ("ROC-A1",), "uV"),
)

# Childhood Adenotonsillectomy Trial (NSRR `chat`, baseline/follow-up/non-randomized): the AASM
# recommended and back-up derivations F3/F4, C3/C4, T3/T4, O1/O2 against the contralateral mastoid and
# E1-M2/E2-M1 (U-Time, resources/usleep_dataset_prep/chat.md).
CHAT_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_f4", "EEG F4-M1", ("F4-M1",), "uV"),
    ChannelRole("eeg_f3", "EEG F3-M2", ("F3-M2",), "uV"),
    ChannelRole("eeg_c4", "EEG C4-M1", ("C4-M1",), "uV"),
    ChannelRole("eeg_c3", "EEG C3-M2", ("C3-M2",), "uV"),
    ChannelRole("eeg_t4", "EEG T4-M1", ("T4-M1",), "uV"),
    ChannelRole("eeg_t3", "EEG T3-M2", ("T3-M2",), "uV"),
    ChannelRole("eeg_o2", "EEG O2-M1", ("O2-M1",), "uV"),
    ChannelRole("eeg_o1", "EEG O1-M2", ("O1-M2",), "uV"),
    ChannelRole("eog_l", "left EOG (E1-M2)", ("E1-M2",), "uV"),
    ChannelRole("eog_r", "right EOG (E2-M1)", ("E2-M1",), "uV"),
)

# Wisconsin Sleep Cohort (NSRR `wsc`): underscore-spelled derivations (C3_M2, C4_M1, O1_M2, O2_M1, F3_M2,
# F4_M1) and E1/E2, chin, as listed in a U-Time WSC preparation note (usleep_dataset_prep/wsc.md of a U-Time
# fork). Uncertain: the WSC montage changed over its decades of recording; older nights carry only some of
# these, and E1/E2's reference is not stated there.
WSC_ROLES: tuple[ChannelRole, ...] = (
    ChannelRole("eeg_c4", "EEG C4-M1", ("C4_M1",), "uV"),
    ChannelRole("eeg_c3", "EEG C3-M2", ("C3_M2",), "uV"),
    ChannelRole("eeg_f4", "EEG F4-M1", ("F4_M1",), "uV"),
    ChannelRole("eeg_f3", "EEG F3-M2", ("F3_M2",), "uV"),
    ChannelRole("eeg_o2", "EEG O2-M1", ("O2_M1",), "uV"),
    ChannelRole("eeg_o1", "EEG O1-M2", ("O1_M2",), "uV"),
    ChannelRole("eog_l", "left EOG (E1)", ("E1",), "uV"),
    ChannelRole("eog_r", "right EOG (E2)", ("E2",), "uV"),
    ChannelRole("emg", "chin EMG", ("chin",), "uV"),
)

COHORT_ROLES: dict[str, tuple[ChannelRole, ...]] = {
    "shhs": SHHS_ROLES,
    "sleep-edf": SLEEPEDF_ROLES,
    "mesa": MESA_ROLES,
    "mros": MROS_ROLES,
    "cfs": CFS_ROLES,
    "chat": CHAT_ROLES,
    "wsc": WSC_ROLES,
}
# Cohorts read with the NSRR loader (EDF + NSRR/Profusion XML).
NSRR_COHORTS: tuple[str, ...] = ("shhs", "mesa", "mros", "cfs", "chat", "wsc")

# NSRR file names start with the cohort: shhs1-200001, mesa-sleep-0001, mros-visit1-aa0001,
# cfs-visit5-800002, chat-baseline-300001, wsc-visit1-10119.
_COHORT_PREFIX = re.compile(r"^(?P<cohort>shhs|mesa|mros|cfs|chat|wsc)(?:\d)?-", re.IGNORECASE)


def cohort_of_record(record_id: str) -> str | None:
    """The NSRR cohort a record id (file stem) names by its prefix, or None when it names none."""
    match = _COHORT_PREFIX.match(record_id)
    return match["cohort"].lower() if match else None


def known_roles() -> dict[str, ChannelRole]:
    """Every role name of every cohort -> its first definition (role names mean the same signal everywhere)."""
    out: dict[str, ChannelRole] = {}
    for roles in COHORT_ROLES.values():
        for role in roles:
            out.setdefault(role.name, role)
    return out


def role_unit(name: str) -> str:
    """The physical unit a role is read in ("uV" for EEG/EOG/EMG/ECG); KeyError for an unknown role."""
    roles = known_roles()
    if name not in roles:
        raise KeyError(f"unknown channel role {name!r} (known: {', '.join(sorted(roles))})")
    return roles[name].unit
