"""The generator's autoscaling policy: replicas follow the images waiting, not the handle calls.

Serve's default policy divides the requests ongoing at a deployment by target_ongoing_requests.
With the ingress's micro-batched calls (serve/hop.py) one ongoing call may carry 64 requests,
so counting calls would never ask for a second replica. Each GeneratorDeployment replica reports
its images queued or rendering (`record_autoscaling_stats`, metric IMAGES_IN_FLIGHT, averaged by
Serve over look_back_period_s); this policy asks for

    replicas = images in flight, all replicas together / serve.target_ongoing_requests

(the target reads "images per replica": about one full batch). Serve applies min/max replicas,
the up/downscale delays and the scaling factors around it. Until replicas have reported (a new
replica, a missing metric), Serve's own count of ongoing requests stands in, and the larger of
the two is used, so the policy never scales below what the default would ask.

Named in the deployment's autoscaling_config as
`policy: {policy_function: "facegen_ray.serve.autoscale:images_in_flight_policy"}`: Serve's
controller imports it, so facegen-ray must be installed on the head node (it is in the cluster
images and `ray up` setup commands, cluster/).
"""

from __future__ import annotations

from typing import Any

IMAGES_IN_FLIGHT = "images_in_flight"
POLICY_FUNCTION = "facegen_ray.serve.autoscale:images_in_flight_policy"


def images_in_flight_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """ctx: ray.serve.config.AutoscalingContext -> (desired replicas, policy state)."""
    replicas = ctx.current_num_replicas
    if replicas == 0:
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(IMAGES_IN_FLIGHT) or {}
    images = float(sum(per_replica.values()))
    load = max(images, float(ctx.total_num_requests))
    return load / ctx.config.get_target_ongoing_requests(), {}
