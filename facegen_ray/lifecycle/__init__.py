"""The model lifecycle after training: which versions exist, which one serves, and how a
candidate gets there.

gate.py      promotion gate: candidate vs serving on one evaluation, promote on pass
retrain.py   the feedback loop: merged feedback data -> warm-started candidate -> the gate

The feedback store the loop reads is data/feedback.py (next to data/feedback_merge.py, which
turns approved images into a dataset version); the serve app writes it.

The registry (<root>/models/registry.json: versions, the serving pointer, promotions) is
facegen_ray/registry.py: it needs only storage, so train (registering an export) imports it
from below. The pairwise-vote store the human rule reads is data/comparison.py (the serve app
writes it). This package sits above data, metrics, train and tune and below serve
(tests/test_layers.py holds the order). Import the submodules directly; this package imports
nothing on its own.
"""
