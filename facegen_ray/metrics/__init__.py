"""Sample-quality metrics (FID, KID, precision/recall, IS, diversity, memorisation).

Import the submodules directly (facegen_ray.metrics.fid, .evaluate, .diversity, ...)."""
