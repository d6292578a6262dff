"""Distributed StyleGAN training on Ray Train (`facegen train`).

schedule.py    progressive schedule: images seen -> stage, alpha, resolution, batch, lr scale
checkpoint.py  full training state <-> checkpoint directory (per-rank RNG files)
loop.py        GANSteps (D/G steps, EMA, AMP) and the per-worker train function
report.py      progress line, sample grid and loss-curve PNGs in the run folder
trainer.py     driver: validation, TorchTrainer wiring, export + registry at the end

Import the submodules directly; this package imports nothing heavy on its own.
"""
