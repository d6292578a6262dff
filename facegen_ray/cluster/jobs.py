"""Driving a local cluster from the root namespace (the machine "outside" the cluster): the
cluster as a context manager, its S3 server, and `ray job submit` through the head's dashboard.
Used by the cluster tests and benchmarks/cluster_faults.py; a user can script the same."""

from __future__ import annotations

import time
from dataclasses import dataclass

from facegen_ray.cluster import local
from facegen_ray.cluster.plan import BUCKET, CREDENTIALS, DASHBOARD_PORT, ClusterState


@dataclass
class JobResult:
    job_id: str
    status: str
    logs: str
    seconds: float


class LocalCluster:
    """`with LocalCluster(3, name=..., subnet=..., state_file=...) as c:` up on enter, down on exit
    (also when the body fails)."""

    def __init__(self, hosts: int, *, name: str, subnet: str, state_file: str, cpus: float = 2, head_cpus: float = 0):
        self.hosts = hosts
        self.state = local.new_state(name, subnet, state_file, cpus_per_host=cpus, head_cpus=head_cpus)

    def __enter__(self) -> LocalCluster:
        local.up(self.hosts, self.state)
        return self

    def __exit__(self, *exc) -> None:
        local.down(local.ClusterState.load(self.state.state_file) if _exists(self.state) else self.state)

    # ------------------------------------------------------------ storage
    def s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.state.s3_endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def upload(self, path: str, key: str) -> str:
        self.s3().upload_file(path, BUCKET, key)
        return f"s3://{BUCKET}/{key}"

    def keys(self, prefix: str) -> list[str]:
        out, token = [], None
        while True:
            kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.s3().list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return out

    # ------------------------------------------------------------ jobs
    @property
    def dashboard(self) -> str:
        return f"http://{self.state.head.ip}:{DASHBOARD_PORT}"

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def submit(self, entrypoint: str) -> str:
        return self.client().submit_job(entrypoint=entrypoint)

    def wait(self, job_id: str, timeout: float) -> JobResult:
        from ray.job_submission import JobStatus

        t0 = time.monotonic()
        client = self.client()
        status = client.get_job_status(job_id)
        while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            if time.monotonic() - t0 > timeout:
                client.stop_job(job_id)
                break
            time.sleep(1)
            status = client.get_job_status(job_id)
        return JobResult(job_id, str(status.value), client.get_job_logs(job_id), time.monotonic() - t0)

    def run_job(self, entrypoint: str, timeout: float) -> JobResult:
        return self.wait(self.submit(entrypoint), timeout)

    def reload(self) -> ClusterState:
        """The state as the CLI verbs (kill-host, add-host) left it."""
        self.state = local.ClusterState.load(self.state.state_file)
        return self.state


def _exists(state: ClusterState) -> bool:
    import os

    return os.path.exists(state.state_file)
