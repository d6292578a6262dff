"""benchmarks/poisoning.py on a tiny scenario (3 simulated hours, 4 honest raters, K=2): the
invariants that hold whatever the figures -- the attacker never stores more approvals than the
rate limits allow, quarantined raters contribute nothing to a merge, and the counts add up."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from facegen_ray.config import RetrainConfig, ServeConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("poisoning", REPO / "benchmarks" / "poisoning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["poisoning"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("poisoning", None)


def tiny(bench, **kw):
    base = {"sessions": 2, "hours": 3.0, "honest": 4, "checkpoints": (1, 2), "review_pass": 0.5}
    return bench.run(bench.Scenario(**{**base, **kw}))


def check_counts(row: dict, sessions: int, minutes: float) -> None:
    att, fb, rc = row["attacker"], ServeConfig().rate_limits["feedback"], RetrainConfig()
    # never more than the feedback buckets let through: one address, and each session
    assert att["approvals"] <= fb.burst + fb.per_minute * minutes
    assert att["approvals"] <= sessions * (fb.burst + fb.per_minute * minutes)
    assert att["attempts"] == att["approvals"] + att["feedback_429"]
    assert att["sessions"] <= sessions and att["images"] % 16 == 0
    for r in [row, *row.get("checkpoints", [])]:
        assert r["merged"] == r["merged_attacker"] + r["merged_honest"] <= r["cap"]
        assert r["merged_attacker"] <= r["candidates_attacker"] <= att["images"]
        assert r["merged_honest"] <= r["candidates_honest"] <= row["honest"]["images"]
        assert r["attacker_share"] == (round(r["merged_attacker"] / r["merged"], 4) if r["merged"] else 0.0)
        assert r["quarantined_opinions_in_merge"] == 0  # held-back opinions never count
        # each merged attacker image carries min_approvals approvals of the attacker's own sessions
        assert r["merged_attacker"] * rc.min_approvals <= att["approvals"]
    assert row["cap"] == min(rc.max_feedback_images, int(rc.max_feedback_share * 21_028))


def test_flood_attacker_invariants(bench):
    rows = tiny(bench, strategy="flood")
    assert [r["review"] for r in rows] == [None, {"attacker_pass": 0.5}]
    plain, reviewed = rows
    check_counts(plain, 2, 3 * 60)
    check_counts(reviewed, 2, 3 * 60)
    first = plain["checkpoints"][0]
    assert first["hours"] == 1.0 and first["merged_attacker"] == 0  # sessions younger than the quarantine
    assert plain["held_back_attacker_raters"] == 0  # it paced itself under the hourly limit
    assert reviewed["merged_attacker"] <= plain["candidates_attacker"]
    assert reviewed["skipped"].get("not_reviewed", 0) >= plain["candidates_attacker"] - reviewed["merged_attacker"]


def test_naive_attacker_is_held_back(bench):
    (row,) = tiny(bench, strategy="naive", review_pass=None)
    check_counts(row, 2, 3 * 60)
    assert row["attacker"]["approvals"] > 2 * RetrainConfig().quarantine_approvals_per_hour
    assert row["held_back_attacker_raters"] == 2
    assert row["candidates_attacker"] == row["merged_attacker"] == 0


def test_patient_and_single_session(bench):
    (patient, _) = tiny(bench, strategy="patient", patient_per_hour=10.0)
    check_counts(patient, 2, 3 * 60 + 24 * 60)  # its sessions were opened a day before
    assert patient["attacker"]["approvals"] <= 2 * 10 * 3 + 2
    (single, _) = tiny(bench, strategy="flood", sessions=1)
    check_counts(single, 1, 3 * 60)
    assert single["merged_attacker"] == 0  # one rater cannot meet min_approvals alone
