"""Face data on Ray Data: sources -> validated, versioned Parquet shards -> training tensors.

ingest (sources -> raw files), transforms (decode/validate/crop/resize/hash), quality (the
blurry / near-constant / low-resolution filter, demographic mix), report (`prepare --report`
page and contact sheets), attributes (UTKFace labels, balancing, classifier tagging), shards
(schema, versions, manifests, read-back), pipeline (`facegen prepare`), feeder (batches for the
training loop), feedback (the store of generated images and votes), feedback_merge (approved
feedback -> a new version), comparison (the store of pairwise /compare votes that serve writes
and the promotion gate's human rule reads).
"""
