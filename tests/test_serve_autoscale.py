"""serve/autoscale.py: the generator's replicas follow the images waiting (reported by each
replica), not Serve's count of (micro-batched) calls. Run through Ray's own policy types: the
policy is loaded from the string the deployment files name, as Serve's controller loads it."""

from __future__ import annotations

import yaml
from conftest import REPO
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from facegen_ray.serve.autoscale import IMAGES_IN_FLIGHT, POLICY_FUNCTION, images_in_flight_policy

DEP = DeploymentID(name="GeneratorDeployment", app_name="facegen")


def _ctx(replicas: int, calls: float, images: list[float] | None, target: float = 64.0) -> AutoscalingContext:
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(replicas)]
    metrics = {IMAGES_IN_FLIGHT: dict(zip(ids, images))} if images is not None else {}
    cfg = AutoscalingConfig(
        min_replicas=1,
        max_replicas=4,
        target_ongoing_requests=target,
        policy=AutoscalingPolicy(policy_function=POLICY_FUNCTION),
    )
    return AutoscalingContext(
        deployment_id=DEP,
        deployment_name=DEP.name,
        app_name=DEP.app_name,
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=ids,
        total_num_requests=calls,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=cfg,
    )


def test_the_named_policy_is_this_function_and_scales_on_images_not_calls():
    policy = AutoscalingPolicy(policy_function=POLICY_FUNCTION).get_policy()
    assert (policy.__module__, policy.__qualname__) == (images_in_flight_policy.__module__, "images_in_flight_policy")
    # one replica, 4 micro-batched calls carrying 200 images: Serve's count (4) would keep 1
    desired, _ = policy(_ctx(1, calls=4, images=[200.0]))
    assert desired == 200 / 64
    # two replicas, little waiting: fewer than two wanted (Serve's delays then decide)
    desired, _ = policy(_ctx(2, calls=2, images=[10.0, 20.0]))
    assert desired == 30 / 64


def test_without_reports_serves_own_count_stands_in_and_the_larger_wins():
    assert images_in_flight_policy(_ctx(1, calls=128, images=None))[0] == 2.0  # no metric yet
    assert images_in_flight_policy(_ctx(2, calls=256, images=[5.0, 5.0]))[0] == 4.0  # calls queued unseen
    assert images_in_flight_policy(_ctx(0, calls=3, images=None))[0] == 0  # cold start: Serve's target


def test_the_deployment_files_name_the_policy():
    doc = yaml.safe_load((REPO / "deployments" / "serve.yaml").read_text())
    (gen,) = [d for d in doc["applications"][0]["deployments"] if d["name"] == "GeneratorDeployment"]
    assert gen["autoscaling_config"]["policy"] == {"policy_function": POLICY_FUNCTION}
    AutoscalingConfig.model_validate(gen["autoscaling_config"])  # Ray accepts it
