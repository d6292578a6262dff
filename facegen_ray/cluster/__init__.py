"""Cluster tooling: facegen_ray.cluster.local builds a multi-host Ray cluster on one Linux machine."""
