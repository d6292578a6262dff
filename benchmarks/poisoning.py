"""Poisoning the feedback loop (issue 34): an attacker with K rater sessions on A addresses
(--addresses, each on its own /24) against honest raters; what share of a retrain's merged
feedback images is the attacker's, under the defaults. One JSON line per configuration.
Every opinion carries the source the app computes (serve/source.py: the client's network,
keyed), so min_approvals counts networks and each network's images per retrain are capped.

    python benchmarks/poisoning.py [--hours 24] [--sessions 1,2,5,20,100]
        [--strategies flood,patient,naive] [--honest 20] [--out docs/security/poisoning.jsonl]

Nothing here re-implements a rule: a simulated clock drives the app's own pieces --
SessionRoutes._new_session / _rater / _limit (serve/session_routes.py: the session bucket per
address, signed cookies, the generate / feedback buckets per address and per rater) over
TokenBuckets and a SessionSigner on that clock; the FeedbackStore (on a temporary root under
/dev/shm, its records stamped by the clock) with what POST /feedback passes; and the retrain's
selection (select_feedback with brakes_of(RetrainConfig()), merge_cap, apply_cap) at each
checkpoint hour. Only the people are modelled:

  honest   --honest raters, each on its own address: visits (3 a day, ~10 min), an image every
           5-40 s, an opinion on half of them, approving 10-70% by the face's appeal; 30% of
           the faces come from 200 popular seeds (shared links, Zipf), so some get several honest
           approvals. Half are returning raters (sessions days old), half new (session on the
           first visit).
  flood    the attacker opens K sessions as fast as the session bucket allows, waits until they
           are older than retrain.quarantine_new_rater_minutes, then cross-approves its own
           images (--votes-per-image distinct sessions each, at most K) as fast as the feedback
           buckets allow, keeping every session at quarantine_approvals_per_hour in any hour.
  patient  the sessions were opened a day earlier; each approves at most --patient-per-hour,
           evenly spread (looks like a person in the per-rater report).
  naive    flood without waiting or pacing (what the quarantine is for).

With the review list (--review-pass P): a person keeps every honest candidate and a share P of
the attacker's (its faces are ordinary generated faces). Left out: many addresses (a botnet:
each address adds what one address gets here), an attacker behind the authenticating proxy's
header (serve.rater_header: no session limit), attacker rejections of honest images.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import heapq
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import HTTPException  # noqa: E402

from facegen_ray.config import RetrainConfig, ServeConfig  # noqa: E402
from facegen_ray.data.feedback import FeedbackStore  # noqa: E402
from facegen_ray.data.feedback_brakes import merge_cap  # noqa: E402
from facegen_ray.data.feedback_merge import apply_cap, brakes_of, select_feedback  # noqa: E402
from facegen_ray.serve import generation as gen  # noqa: E402
from facegen_ray.serve.identity import SESSION_COOKIE, SessionSigner  # noqa: E402
from facegen_ray.serve.ratelimit import TokenBuckets, _Local  # noqa: E402
from facegen_ray.serve.session_routes import SessionRoutes  # noqa: E402
from facegen_ray.storage import Storage  # noqa: E402

EPOCH = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp()  # simulated t=0


def attacker_address(k: int) -> str:
    """The attacker's k-th address, each on its own /24 (its own source, serve/source.py)."""
    return f"203.0.{113 + k}.7"


MODEL = {"model_version": "v1", "model_uri": "sim://v1", "weights_sha256": "0" * 64}
PNG = b"\x89PNG\r\n\x1a\n sim"  # selection never decodes the image
POPULAR = list(range(200))  # seeds of shared links: Zipf weights (rank r: 1 / (r + 1))
POPULAR_WEIGHTS = [1 / (r + 1) for r in POPULAR]
SLACK_S = 2.0  # the attacker's margin on the quarantine's edges (records keep milliseconds)


@dataclasses.dataclass
class Scenario:
    sessions: int = 5  # K
    addresses: int = 1  # the attacker's addresses, each on its own /24
    strategy: str = "flood"  # flood | patient | naive
    hours: float = 24.0
    honest: int = 20
    votes_per_image: int = 3  # the attacker's approvals per image (at most K)
    patient_per_hour: float = 20.0
    base_images: int = 21_028  # the full UTKFace set prepared here (docs/quality.md)
    checkpoints: tuple[float, ...] = (1, 2, 6, 12, 24)
    review_pass: float | None = 0.1
    seed: int = 0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0  # seconds since EPOCH

    def __call__(self) -> float:
        return EPOCH + self.t


class App(SessionRoutes):
    """The app's rater and rate-limit logic (SessionRoutes) on a simulated clock, no Serve."""

    def __init__(self, clock: Clock) -> None:
        self.cfg = ServeConfig()
        buckets = TokenBuckets(self.cfg.rate_limits, clock=clock)
        self.guard = SimpleNamespace(
            take=_Local(buckets.take), take_many=_Local(lambda takes: [buckets.take(*t) for t in takes])
        )
        self.guard.actor_handle = _Local(lambda: self.guard)
        self._signer = SessionSigner(b"s" * 40, self.cfg.session_ttl_s, clock=clock)

    @staticmethod
    def request(address: str, cookie: str | None = None) -> Any:
        return SimpleNamespace(
            client=SimpleNamespace(host=address), headers={}, cookies={SESSION_COOKIE: cookie} if cookie else {}
        )

    async def generate(self, store: FeedbackStore, address: str, cookie: str | None, seeds: list[int]):
        """POST /generate's limit and records: the image ids, or the Retry-After seconds (429)."""
        req = self.request(address, cookie)
        try:
            await self._limit(req, "generate", await self._rater(req), cost=len(seeds))
        except HTTPException as e:
            return int(e.headers["Retry-After"])
        ids = []
        for s in seeds:
            iid = gen.image_id(MODEL["model_version"], MODEL["weights_sha256"], s, 0.7, None)
            meta = {"seed": s, "truncation": 0.7, "attributes": None, "condition": None, "resolution": 64}
            store.record_image(iid, PNG, {**meta, **MODEL})
            ids.append(iid)
        return ids

    async def feedback(self, store: FeedbackStore, address: str, cookie: str, iid: str, approved: bool):
        """POST /feedback's rater, limit and store call: True (stored) or the Retry-After seconds."""
        req = self.request(address, cookie)
        rater = await self._rater(req, required=True)
        try:
            await self._limit(req, "feedback", rater)
        except HTTPException as e:
            return int(e.headers["Retry-After"])
        src = await self._source(req, rater)  # the app's keyed network of the opinion
        return store.add_feedback(iid, approved, None, None, None, rater.rater_id, rater.since, source=src).created


def appeal(seed: int) -> float:
    return int(hashlib.sha256(str(seed).encode()).hexdigest()[:8], 16) / 2**32


class Honest:
    def __init__(self, i: int, sim: Sim) -> None:
        self.sim, self.rng = sim, random.Random(f"{sim.sc.seed}-honest-{i}")
        self.address, self.cookie, self.visit_end = f"10.{1 + i // 250}.{i % 250 + 1}.1", None, None
        if self.rng.random() < 0.5:  # a returning rater: a session issued days ago
            self.cookie = sim.app._signer.issue(now=sim.clock() - self.rng.uniform(1, 14) * 86400)[0]
        self.start = self.rng.uniform(0, 8 * 3600)

    async def step(self, t: float) -> float:
        sim, rng, c = self.sim, self.rng, self.sim.counts["honest"]
        if self.visit_end is None or t >= self.visit_end:
            if self.visit_end is not None:  # the visit is over: the next one
                self.visit_end = None
                return t + rng.expovariate(3 / 86400)
            self.visit_end = t + rng.expovariate(1 / 600)
        if self.cookie is None:
            new = await sim.app._new_session(sim.app.request(self.address))
            self.cookie = new[0] if new else None
        if rng.random() < 0.3:
            seed = rng.choices(POPULAR, POPULAR_WEIGHTS)[0]  # a popular face (a shared link)
        else:
            seed = rng.randrange(1000, 10**9)
        ids = await sim.app.generate(sim.store, self.address, self.cookie, [seed])
        if isinstance(ids, list):
            c["images"] += 1
            if self.cookie and rng.random() < 0.5:
                ok = rng.random() < 0.1 + 0.6 * appeal(seed)
                got = await sim.app.feedback(sim.store, self.address, self.cookie, ids[0], ok)
                c["approvals" if ok else "rejections"] += got is True
        return t + rng.uniform(5, 40)


class Attacker:
    def __init__(self, sim: Sim) -> None:
        self.sim, self.sc = sim, sim.sc
        self.sessions: list[tuple[str, float, list[float]]] = []  # (cookie, since, approval times)
        self.images: list[str] = []
        self.done = 0  # approvals made; approval c goes to image c // a from session (c//a*a + c%a) % K
        self.a = max(1, min(self.sc.sessions, self.sc.votes_per_image))
        self.start = -86400.0 if self.sc.strategy == "patient" else 0.0

    def ready_at(self, s: int, t: float) -> float:
        """When session s may approve without tripping the quarantine (t when it may now)."""
        rc, (_, since, times) = self.sim.rcfg, self.sessions[s]
        if self.sc.strategy == "naive":
            return t
        at = max(t, since - EPOCH + rc.quarantine_new_rater_minutes * 60 + SLACK_S, 0.0)
        if self.sc.strategy == "patient":
            return max(at, times[-1] + 3600 / self.sc.patient_per_hour) if times else at
        n = rc.quarantine_approvals_per_hour
        return max(at, times[-n] + 3600 + SLACK_S) if len(times) >= n else at

    async def step(self, t: float) -> float | None:
        sim, c = self.sim, self.sim.counts["attacker"]
        if len(self.sessions) < self.sc.sessions:
            addr = attacker_address(len(self.sessions) % self.sc.addresses)
            new = await sim.app._new_session(sim.app.request(addr))
            if new is None:
                c["session_429"] += 1
                return t + 10.0  # a new session every 10 s: the session bucket's refill (6/min)
            self.sessions.append((new[0], new[1].since, []))
            c["sessions"] += 1
            return t + 0.01
        j = self.done // self.a
        if j >= len(self.images):
            seeds = list(range(2 * 10**9 + len(self.images), 2 * 10**9 + len(self.images) + 16))
            ids = await sim.app.generate(sim.store, attacker_address(j % self.sc.addresses), None, seeds)
            if isinstance(ids, int):
                c["generate_429"] += 1
                return t + ids
            self.images += ids
            c["images"] += len(ids)
        s = (j * self.a + self.done % self.a) % self.sc.sessions
        at = self.ready_at(s, t)
        if at > t:
            return at
        c["attempts"] += 1
        addr = attacker_address(s % self.sc.addresses)  # a session posts from the address it came from
        got = await sim.app.feedback(sim.store, addr, self.sessions[s][0], self.images[j], True)
        if isinstance(got, int) and not isinstance(got, bool):
            c["feedback_429"] += 1
            return t + got
        c["approvals"] += got
        self.sessions[s][2].append(t)
        self.done += 1
        return t + 0.01


class Sim:
    def __init__(self, sc: Scenario, root: str) -> None:
        self.sc, self.root, self.clock = sc, root, Clock()
        self.rcfg = RetrainConfig()
        self.app = App(self.clock)
        self.store = FeedbackStore(Storage(), root, clock=self.clock)
        self.counts = {
            "attacker": dict.fromkeys(
                ("sessions", "session_429", "images", "generate_429", "attempts", "feedback_429", "approvals"), 0
            ),
            "honest": dict.fromkeys(("images", "approvals", "rejections"), 0),
        }

    def attacker_raters(self, att: Attacker) -> set[str]:
        return {"s-" + cookie.split(".")[1] for cookie, _, _ in att.sessions}

    def merge(self, att: Attacker, review: frozenset[str] | None = None) -> dict[str, Any]:
        """The retrain's selection now: select_feedback (defaults, brakes) + the cap."""
        report: dict[str, Any] = {}
        brakes = dataclasses.replace(brakes_of(self.rcfg), review=review)
        rc = self.rcfg
        items, skipped = select_feedback(Storage(), self.root, rc.min_approvals, rc.min_rating, brakes, report)
        cap = merge_cap(self.sc.base_images, rc.max_feedback_images, rc.max_feedback_share)
        merged = apply_cap(items, cap, skipped, rc.max_feedback_images_per_source, rc.min_approvals)  # as retrain
        mine, bad = set(att.images), set(report["held_back"])
        flooded = {r for r, why in report["held_back"].items() if "within an hour" in why}
        counted = [self.store.get_feedback(f) for it in merged for f in it.feedback_ids]
        n_att = sum(it.image_id in mine for it in merged)
        return {
            "hours": round(self.clock.t / 3600, 2),
            "candidates_attacker": sum(it.image_id in mine for it in items),
            "candidates_honest": sum(it.image_id not in mine for it in items),
            "cap": cap,
            "merged": len(merged),
            "merged_attacker": n_att,
            "merged_honest": len(merged) - n_att,
            "attacker_share": round(n_att / len(merged), 4) if merged else 0.0,
            "held_back_raters": report["held_back_raters"],
            "held_back_attacker_raters": len(bad & self.attacker_raters(att)),
            "held_back_honest_raters": len(bad - self.attacker_raters(att)),
            "held_back_honest_flood": len(flooded - self.attacker_raters(att)),
            "quarantined_opinions_in_merge": sum(r["rater"] in flooded or not quarantine_ok(r, rc) for r in counted),
            "top_rater_share": report["top_rater_share"],
            "skipped": {k: v for k, v in skipped.items() if v},
            "_candidates": items,
        }


def quarantine_ok(rec: dict[str, Any], rc: RetrainConfig) -> bool:
    """An opinion the merge counted must be older than the new-rater quarantine (a check, not the rule)."""
    created = dt.datetime.fromisoformat(rec["created"]).timestamp()
    return created - float(rec["rater_since"]) >= rc.quarantine_new_rater_minutes * 60


async def simulate(sc: Scenario, root: str) -> list[dict[str, Any]]:
    sim = Sim(sc, root)
    att = Attacker(sim)
    honest = [Honest(i, sim) for i in range(sc.honest)]
    end = sc.hours * 3600
    marks = sorted({h * 3600 for h in sc.checkpoints if h < sc.hours} | {end})
    events = [(att.start, 0, att)] + [(h.start, i + 1, h) for i, h in enumerate(honest)]
    heapq.heapify(events)
    rows, n = [], len(events)
    while True:
        t, i, actor = heapq.heappop(events) if events else (end + 1, 0, None)
        while marks and marks[0] <= t:  # the retrain's view at each checkpoint
            sim.clock.t = marks.pop(0)
            rows.append(sim.merge(att))
        if t > end or actor is None:
            break
        sim.clock.t = t
        nxt = await actor.step(t)
        if nxt is not None:
            n += 1
            heapq.heappush(events, (nxt, n, actor))
    final = rows[-1]
    out = [{"review": None, **final, "checkpoints": [strip(r) for r in rows[:-1]]}]
    if sc.review_pass is not None:  # a person keeps the honest candidates and a share of the attacker's
        rng, mine = random.Random(f"{sc.seed}-review"), set(att.images)
        keep = [it.image_id for it in final["_candidates"] if it.image_id not in mine or rng.random() < sc.review_pass]
        out.append({"review": {"attacker_pass": sc.review_pass}, **sim.merge(att, frozenset(keep))})
    bound = ServeConfig().rate_limits["feedback"]
    minutes = (end - att.start) / 60
    for row in out:
        row.update(
            attacker={**sim.counts["attacker"], "feedback_allowed_max": int(bound.burst + bound.per_minute * minutes)},
            honest={"raters": sc.honest, **sim.counts["honest"]},
        )
    return [strip(r) for r in out]


def strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def run(sc: Scenario) -> list[dict[str, Any]]:
    """The benchmark's core: one scenario on a fresh temporary store; its result rows."""
    root = tempfile.mkdtemp(prefix="facegen-poison-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        return asyncio.run(simulate(sc, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def header() -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        commit = sha.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    rc, sv = RetrainConfig(), ServeConfig()
    return {
        "benchmark": "poisoning",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "commit": commit,
        "command": "python benchmarks/poisoning.py " + " ".join(sys.argv[1:]),
        "defaults": {
            "rate_limits": {k: v.model_dump() for k, v in sv.rate_limits.items()},
            **{k: getattr(rc, k) for k in ("min_approvals", "max_feedback_images", "max_feedback_share")},
            **{k: getattr(rc, k) for k in ("quarantine_new_rater_minutes", "quarantine_approvals_per_hour")},
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--sessions", default="1,2,5,20,100", help="attacker sessions K, comma-separated")
    p.add_argument("--strategies", default="flood,patient,naive")
    p.add_argument("--addresses", default="1", help="attacker addresses A (distinct /24s), comma-separated")
    p.add_argument("--honest", type=int, default=20)
    p.add_argument("--votes-per-image", type=int, default=3)
    p.add_argument("--patient-per-hour", type=float, default=20.0)
    p.add_argument("--base-images", type=int, default=21_028)
    p.add_argument("--review-pass", type=float, default=0.1, help="share of attacker candidates a reviewer keeps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON lines here")
    args = p.parse_args(argv)
    head, lines = header(), []
    for strategy in args.strategies.split(","):
        for n_sessions, n_addr in (
            (k, a) for k in map(int, args.sessions.split(",")) for a in map(int, args.addresses.split(","))
        ):
            sc = Scenario(
                sessions=n_sessions,
                addresses=n_addr,
                strategy=strategy,
                hours=args.hours,
                honest=args.honest,
                votes_per_image=args.votes_per_image,
                patient_per_hour=args.patient_per_hour,
                base_images=args.base_images,
                review_pass=args.review_pass if strategy != "naive" else None,
                seed=args.seed,
            )
            t0 = time.perf_counter()
            rows = run(sc)
            for row in rows:
                top = {"strategy": strategy, "sessions": n_sessions, "addresses": n_addr, "hours": args.hours}
                line = {**head, **top, **row, "scenario": dataclasses.asdict(sc)}
                line["run_s"] = round(time.perf_counter() - t0, 1)
                lines.append(json.dumps(line))
                print(lines[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
