"""Who a recording belongs to, and which visit (night) of that person it is, from its record id.

Splits are by person, so the subject must be the person, not the file. Each dataset names its files its
own way:

* NSRR cohorts (source "shhs"): `<visit>-<nsrrid>`, e.g. `shhs1-200001` and `shhs2-200001` are SHHS visits 1
  and 2 of the same participant, nsrrid 200001 (likewise `mros-visit1-aa0001`, `chat-baseline-300001`).
  Subject = the nsrrid, visit = everything before it.
* Sleep-EDF (source "sleep-edf"): `SC4ssNE0` (sleep cassette) and `ST7ssNJ0` (sleep telemetry): `ss` is
  the subject, `N` the night. Subject = `SC4ss` / `ST7ss`, visit = `night<N>`.

An id that follows neither pattern is its own subject and has no visit (None).
"""

from __future__ import annotations

import re

_NSRR = re.compile(r"^(?P<visit>.+)-(?P<nsrrid>[^-]+)$")
_SLEEP_EDF = re.compile(r"^(?P<subject>S[CT]\d\d\d)(?P<night>\d)")

# The SHHS cohorts of the papers (shhs-5791, shhs-5463) are SHHS visit 1 by definition.
SHHS1_VISIT = "shhs1"


def _match(record_id: str, source: str) -> re.Match | None:
    return (_SLEEP_EDF if source == "sleep-edf" else _NSRR).match(record_id)


def subject_of(record_id: str, source: str) -> str:
    """The person a record belongs to: the nsrrid (NSRR) or SC4ss / ST7ss (Sleep-EDF)."""
    match = _match(record_id, source)
    if match is None:
        return record_id
    return match["subject"] if source == "sleep-edf" else match["nsrrid"]


def visit_of(record_id: str, source: str) -> str | None:
    """The visit a record is: "shhs1", "shhs2", "mros-visit1" (NSRR) or "night1", "night2" (Sleep-EDF)."""
    match = _match(record_id, source)
    if match is None:
        return None
    return f"night{match['night']}" if source == "sleep-edf" else match["visit"]


def person_of(record_id: str, source: str) -> str:
    """The person across cohorts: the subject, prefixed for NSRR ids by its cohort (the visit's first word without
    its number: shhs, mros, chat, mesa, cfs, wsc), since an nsrrid is unique only within its cohort (MESA 0001
    is not WSC 0001). Sleep-EDF subjects (SC4ss, ST7ss) and ids of no known pattern are their own."""
    visit = visit_of(record_id, source)
    subject = subject_of(record_id, source)
    if source == "sleep-edf" or visit is None:
        return subject
    return f"{re.sub(r'[0-9]+$', '', visit.split('-')[0])}:{subject}"
