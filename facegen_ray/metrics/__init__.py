"""Sample-quality metrics (FID, KID, precision/recall, IS) and the attribute classifier.

Import the submodules directly (facegen_ray.metrics.fid, .evaluate, .attributes, ...)."""
