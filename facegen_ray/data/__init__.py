"""Face data on Ray Data: sources -> validated, versioned Parquet shards -> training tensors.

ingest (sources -> raw files), transforms (decode/validate/crop/resize/hash), attributes
(UTKFace labels, balancing, classifier tagging), shards (schema, versions, manifests,
read-back), pipeline (`facegen prepare`).
"""
