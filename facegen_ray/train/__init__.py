"""Distributed StyleGAN training on Ray Train (`facegen train`).

schedule.py    progressive schedule: images seen -> stage, alpha, resolution, batch, lr scale
checkpoint.py  full training state <-> checkpoint directory (per-rank RNG files)
steps.py       GANSteps: the D/G steps, EMA, AMP; reals, row weights, fixed latents
distributed.py collectives of the hand-written DDP (gradient all-reduce, broadcast, digests)
loop.py        the per-worker train function Ray Train runs, as phases
loop_state.py  the loop's counters, log window and log / evaluation / checkpoint decision
faults.py      the crash tests' fault injection (does nothing unless a test names a fault)
report.py      progress line, sample grid and loss-curve PNGs in the run folder
trainer.py     driver: validation, TorchTrainer wiring, images-seen bar (terminal only), export + registry

Import the submodules directly; this package imports nothing heavy on its own.
"""
