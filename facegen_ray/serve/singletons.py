"""Where the app's one-replica deployments run: on the head node, beside Serve's controller.

ModelState (the model pointer) and FacegenGuard (rate limits, the session secret) each have one
replica that every request or every generator replica depends on. Placed on any node, a worker
host's loss took them with it: every request then waited on the guard until Serve's controller
had noticed the node's death and started a new replica elsewhere (over 30 s on the namespace
cluster, tests/test_cluster.py), and a restarted ModelState forgets an admin reload. The head
already carries what the app cannot lose (the GCS and Serve's controller), so these two go
there: a worker host's loss cannot take them, and the head's loss stops the app either way.

Ray gives the head node the resource `node:__internal_head__` (1.0); asking for a sliver of it
pins an actor there without taking CPU.
"""

from typing import Any

from facegen_ray.resources import HEAD_NODE_RESOURCE


def on_head_node() -> dict[str, Any]:
    """ray_actor_options for a no-CPU actor that must run on the head node."""
    return {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}
