"""Do the attribute directions do what they say? (issue 17)

For every direction in MODEL/directions.json: take --num-faces faces (seeds from --seed, psi
--truncation), move each by -S and +S along the direction (S = --strength, in units of the
direction's margin_scale), and read both versions with the attribute classifier's soft outputs:
expected age in years (bucket probabilities x representative ages), P(female), P(race k).
Reports, per direction, the mean change (+S minus -S) of every one of those readings: the
target's change (age_years for "age", p_female for "gender", p_race_<k> for "race_<k>") should
be clearly positive, the others near zero (disentanglement), and the fraction of faces whose
target reading went up.

Prints ONE JSON line: {"benchmark": "directions", "model_version", "num_faces", "strength",
"truncation", "classifier_held_out", "directions": {name: {"target", "target_change",
"target_up_fraction", "changes": {reading: mean change}, "max_other_abs_change"}}}.

Use the attribute classifier the directions were fitted with for a like-for-like reading, or an
independent one (trained on other data) for a stricter check.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from facegen_ray.models.attributes import load_tagger, representative_ages, to_input
from facegen_ray.models.directions import RACE_NAMES
from facegen_ray.models.latent import MAX_EDIT_STRENGTH, seed_ws, synthesize
from facegen_ray.serve.generation import load_model
from facegen_ray.storage import Storage


@torch.no_grad()
def readings(tagger, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N,H,W,3] -> {"age_years", "p_female", "p_race_<k>": [N]} from the softmax outputs."""
    logits = tagger.model(to_input(images, tagger.resolution))
    ages = torch.tensor(representative_ages(tagger.age_buckets), dtype=torch.float32)
    out = {
        "age_years": (logits["age"].softmax(1) * ages).sum(1).numpy(),
        "p_female": logits["gender"].softmax(1)[:, 1].numpy(),
    }
    p_race = logits["race"].softmax(1).numpy()
    for k, name in enumerate(RACE_NAMES[: p_race.shape[1]]):
        out[f"p_race_{name}"] = p_race[:, k]
    return out


def target_of(name: str) -> str:
    return {"age": "age_years", "gender": "p_female"}.get(name, f"p_{name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory URI or registry version (with directions.json)")
    ap.add_argument("--attribute-model", required=True, help="attribute classifier folder")
    ap.add_argument("--root", default="./facegen-data", help="storage root (for registry versions)")
    ap.add_argument("--num-faces", type=int, default=200)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--truncation", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=100_000, help="first seed (default: away from directions' sample)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not 0 < args.strength <= MAX_EDIT_STRENGTH:
        raise SystemExit(f"--strength must be in (0, {MAX_EDIT_STRENGTH:g}]")
    storage = Storage()
    model = load_model(storage, args.model, args.root, device=args.device)
    if model.directions is None:
        raise SystemExit(
            model.directions_error or f"{model.uri} has no directions.json: run `facegen directions` first"
        )
    tagger = load_tagger(storage, args.attribute_model)
    G, d = model.G, model.directions
    seeds = list(range(args.seed, args.seed + args.num_faces))
    sums: dict[str, dict[str, float]] = {n: {} for n in d.names}
    up: dict[str, int] = {n: 0 for n in d.names}
    for i in range(0, len(seeds), args.batch_size):
        ws = seed_ws(G, seeds[i : i + args.batch_size], args.truncation)  # [n,L,D]
        for name in d.names:
            lo = readings(tagger, synthesize(G, d.edit(ws, {name: -args.strength})))
            hi = readings(tagger, synthesize(G, d.edit(ws, {name: args.strength})))
            for k in lo:
                sums[name][k] = sums[name].get(k, 0.0) + float((hi[k] - lo[k]).sum())
            up[name] += int((hi[target_of(name)] > lo[target_of(name)]).sum())
    out = {}
    for name in d.names:
        changes = {k: round(v / len(seeds), 5) for k, v in sums[name].items()}
        target = target_of(name)
        others = [
            abs(v)
            for k, v in changes.items()
            if k != target and not (target.startswith("p_race") and k.startswith("p_race"))
        ]
        out[name] = {
            "target": target,
            "target_change": changes.get(target),
            "target_up_fraction": round(up[name] / len(seeds), 4),
            "changes": changes,
            "max_other_abs_change": round(max(others), 5) if others else None,
        }
    print(
        json.dumps(
            {
                "benchmark": "directions",
                "model_version": model.version,
                "model_uri": model.uri,
                "num_faces": len(seeds),
                "strength": args.strength,
                "truncation": args.truncation,
                "device": args.device,
                "classifier_held_out": tagger.meta.get("held_out"),
                "directions": out,
            }
        )
    )


if __name__ == "__main__":
    main()
