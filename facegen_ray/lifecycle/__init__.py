"""The model lifecycle after training: which versions exist, which one serves, and how a
candidate gets there.

registry.py  <root>/models/registry.json: versions, the serving pointer, promotions
gate.py      promotion gate: candidate vs serving on one evaluation, promote on pass
retrain.py   the feedback loop: merged feedback data -> warm-started candidate -> the gate

The feedback store the loop reads is data/feedback.py (next to data/feedback_merge.py, which
turns approved images into a dataset version); the serve app writes it.

Layering: registry.py needs only storage, so train (registering an export) and serve
(resolving MODEL) import it from below; gate.py and retrain.py sit above data, metrics and
train (tests/test_layers.py holds the order). Import the submodules directly; this package
imports nothing on its own.
"""
