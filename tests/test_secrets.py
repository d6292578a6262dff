"""No credential ever reaches storage, and a run survives credentials that rotate.

Both tests run the real CLI (`facegen prepare`, `facegen tune`, `facegen train`) in a child
process with an embedded Ray instance, against a moto S3 server of their own, with credentials
the test knows:

- test_no_credential_reaches_storage: a 2-trial sweep and a training run, then every object in
  the bucket and every file Ray and the child wrote on local disk (its Ray temp dir with the
  session's pickles, logs and Tune's driver-side experiment state, its HOME and TMPDIR) are
  scanned for the access key id and the secret: zero hits. (Before the fix, `tuner.pkl` and
  `basic-variant-state-*.json` in the bucket held both.)
- test_run_survives_rotating_credentials: moto enforces IAM authentication; the child finds
  its credentials only through a `credential_process` in its AWS config (as with SSO, web
  identity or an instance profile, they are short-lived: each answer expires after a few
  seconds). Once the run has checkpointed, a second access key is created and handed out, then
  the first one is deleted (the server rejects it from then on); the run keeps checkpointing
  and finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, tiny_model_dict

pytestmark = pytest.mark.slow  # each starts its own Ray in a child process (1-3 min on 2 cores)

KEY_ID = "AKIAFACEGENLEAKTEST7"
SECRET = "fgSecret/LeakProbe+9q8w7e6r5t4y3u2i1o0pZXCV"
BUCKET = "facegen-secrets"

TRAIN = {
    "start_resolution": 8,
    "stabilize_images": 10_000,
    "fade_images": 16,
    "batch_size": {8: 8},
    "log_every_images": 32,
    "shuffle_buffer": 16,
    "ema_half_life_images": 100,
    "max_failures": 0,
    "seed": 3,
    "amp": False,
    "num_workers": 1,
}


class Moto:
    """moto's standalone S3/IAM server in a child process on a free loopback port."""

    def __init__(self, env: dict[str, str] | None = None):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail("moto server did not start")

    def client(self, service: str, key: str | None = None, secret: str | None = None):
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def scratch():
    """A short temp dir (Ray's socket paths must stay under 108 bytes) with home/, tmp/, ray/."""
    d = Path(tempfile.mkdtemp(prefix="fgsec-", dir="/tmp"))
    for sub in ("home", "tmp", "ray", "cache"):
        (d / sub).mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def child_env(scratch: Path, **aws: str) -> dict[str, str]:
    """The child's environment: no AWS setting of ours leaks in except `aws`; everything it
    writes locally goes below `scratch` (HOME, TMPDIR, RAY_TMPDIR, FACEGEN_CACHE_DIR)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(
        HOME=str(scratch / "home"),
        TMPDIR=str(scratch / "tmp"),
        RAY_TMPDIR=str(scratch / "ray"),
        FACEGEN_CACHE_DIR=str(scratch / "cache"),
        PYTHONPATH=str(REPO),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(scratch / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "no-aws-credentials"),
        AWS_DEFAULT_REGION="us-east-1",
        FACEGEN_PROGRESS="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_TRAIN_ENABLE_STATE_TRACKING="0",
        TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
    )
    env.update(aws)
    return env


def run_cli(argvs: list[list[str]], env: dict[str, str], cwd: Path, timeout: float = 480) -> subprocess.Popen:
    """Start one child process running the CLI commands in order (one Ray instance for all)."""
    code = (
        "import sys, json\n"
        "from facegen_ray.cli import main\n"
        f"for argv in json.loads({json.dumps(json.dumps(argvs))}):\n"
        "    rc = main(argv)\n"
        "    if rc:\n"
        "        sys.exit(rc)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def s3_set(endpoint: str) -> list[str]:
    return ["--set", f"storage.endpoint_url={endpoint}", "--set", "storage.region=us-east-1"]


def write_configs(d: Path) -> tuple[Path, Path]:
    base = d / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": tiny_model_dict(8),
                "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
                "train": {**TRAIN, "total_images": 64, "checkpoint_every_images": 32, "keep_checkpoints": 2},
            }
        )
    )
    sweep = d / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "leak",
                "base_config": base.name,
                "metric": "fid",
                "num_samples": 1,
                "search_space": {"train.g_lr": {"grid": [0.0005, 0.004]}},
                "max_concurrent_trials": 2,
                "eval": {"num_gen": 16, "num_real": 16, "every_images": 32, "batch_size": 16},
            },
            sort_keys=False,
        )
    )
    return base, sweep


def bucket_objects(s3) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def hits(blob: bytes, needles: list[bytes]) -> list[str]:
    return [n.decode() for n in needles if n in blob]


def test_no_credential_reaches_storage(scratch):
    moto = Moto()
    try:
        s3 = moto.client("s3", KEY_ID, SECRET)
        s3.create_bucket(Bucket=BUCKET)
        root = f"s3://{BUCKET}/root"
        base, sweep = write_configs(scratch)
        sample = REPO / "facegen_ray" / "sample_data" / "utkface-sample.zip"
        argvs = [
            [
                "prepare",
                str(sample),
                f"{root}/datasets/faces",
                "--resolution",
                "8",
                "--limit",
                "48",
                *s3_set(moto.endpoint),
            ],
            ["tune", str(sweep), "--root", root, *s3_set(moto.endpoint)],
            ["train", "--config", str(base), "--root", root, "--run-name", "leak-run", *s3_set(moto.endpoint)],
        ]
        env = child_env(scratch, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
        proc = run_cli(argvs, env, scratch)
        out, _ = proc.communicate(timeout=480)
        assert proc.returncode == 0, out[-4000:]

        objects = bucket_objects(s3)
        keys = set(objects)
        # what is scanned: the sweep's Tune state and both trials' runs, and the training run
        assert any(k.startswith("root/tune/leak/") and k.endswith("tuner.pkl") for k in keys), sorted(keys)
        assert any("basic-variant-state" in k for k in keys), sorted(keys)
        assert any(k.startswith("root/runs/leak-run/checkpoint-") for k in keys), sorted(keys)
        needles = [KEY_ID.encode(), SECRET.encode()]
        leaked = {k: h for k, b in objects.items() if (h := hits(b, needles))}
        assert not leaked, f"credentials written to the bucket: {leaked}"

        local = [p for p in scratch.rglob("*") if p.is_file() and not p.is_symlink()]
        pickles = [p for p in local if p.suffix in (".pkl", ".json") or "session" in p.parts[-2]]
        assert any(p.name.endswith(".pkl") for p in pickles) or any("session_" in str(p) for p in local)
        leaked_local = {}
        for p in local:
            try:
                blob = p.read_bytes()
            except OSError:
                continue  # a socket or a file removed while we walked
            if h := hits(blob, needles):  # where, and the line around it (secret masked)
                line = next(ln for ln in blob.splitlines() if any(n in ln for n in needles))
                leaked_local[str(p)] = (h, line[:600].replace(SECRET.encode(), b"<SECRET>"))
        assert not leaked_local, f"credentials written to local disk: {leaked_local}"
        print(f"scanned {len(objects)} objects and {len(local)} local files: no credential")
    finally:
        moto.stop()


CRED_PROCESS = """import datetime as dt, json, sys
cur = json.load(open(sys.argv[1]))
with open(sys.argv[2], "a") as log:
    log.write(cur["AccessKeyId"] + "\\n")
exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(sys.argv[3]))
print(json.dumps({"Version": 1, "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%SZ"), **cur}))
"""


def test_run_survives_rotating_credentials(scratch):
    """What is simulated: short-lived credentials from a credential_process (each answer valid
    for LIFETIME_S seconds, as an STS/SSO/instance-profile session is for an hour), a rotation
    that hands out a new key, and a server (moto, IAM auth on) that rejects the old key once it
    is deleted. Not simulated: real STS session tokens, or an instance metadata server."""
    lifetime_s = 4
    moto = Moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})  # create user, policy, first key; then auth
    try:
        iam = moto.client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="facegen")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="facegen", PolicyName="all", PolicyDocument=json.dumps(policy))
        k1 = iam.create_access_key(UserName="facegen")["AccessKey"]
        current, calls = scratch / "current.json", scratch / "calls.log"

        def hand_out(key) -> None:
            tmp = current.with_suffix(".tmp")
            tmp.write_text(json.dumps({"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}))
            os.replace(tmp, current)

        hand_out(k1)
        script = scratch / "cred_process.py"
        script.write_text(CRED_PROCESS)
        config = scratch / "aws-config"
        config.write_text(f"[default]\ncredential_process = {sys.executable} {script} {current} {calls} {lifetime_s}\n")
        s3 = moto.client("s3", k1["AccessKeyId"], k1["SecretAccessKey"])
        s3.create_bucket(Bucket=BUCKET)
        with pytest.raises(Exception, match="InvalidAccessKeyId|InvalidClientTokenId|403"):
            moto.client("s3", "AKIANOTAKEY000000000", "nope").list_objects_v2(Bucket=BUCKET)  # auth is on

        root = f"s3://{BUCKET}/root"
        base, _ = write_configs(scratch)
        sample = REPO / "facegen_ray" / "sample_data" / "utkface-sample.zip"
        run = ["--run-name", "rotate", "--set", "train.total_images=1600", "--set", "train.checkpoint_every_images=32"]
        argvs = [
            [
                "prepare",
                str(sample),
                f"{root}/datasets/faces",
                "--resolution",
                "8",
                "--limit",
                "48",
                *s3_set(moto.endpoint),
            ],
            ["train", "--config", str(base), "--root", root, *run, "--no-export", *s3_set(moto.endpoint)],
        ]
        env = child_env(scratch, AWS_CONFIG_FILE=str(config))
        proc = run_cli(argvs, env, scratch)

        def checkpoints(client) -> list[int]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="root/runs/rotate/")
            names = {o["Key"].split("/")[3] for p in pages for o in p.get("Contents", [])}
            return sorted(int(n.split("-")[1]) for n in names if n.startswith("checkpoint-"))

        deadline = time.monotonic() + 420
        while not checkpoints(s3):
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        # rotate: a new key is handed out; once every cached answer has expired the old key dies
        iam = moto.client("iam", k1["AccessKeyId"], k1["SecretAccessKey"])
        k2 = iam.create_access_key(UserName="facegen")["AccessKey"]
        hand_out(k2)
        time.sleep(2 * lifetime_s)
        s3 = moto.client("s3", k2["AccessKeyId"], k2["SecretAccessKey"])
        iam = moto.client("iam", k2["AccessKeyId"], k2["SecretAccessKey"])
        iam.delete_access_key(UserName="facegen", AccessKeyId=k1["AccessKeyId"])
        before = checkpoints(s3)
        assert proc.poll() is None, "the run ended before the old key was revoked: make it longer"
        with pytest.raises(Exception, match="InvalidAccessKeyId"):
            moto.client("s3", k1["AccessKeyId"], k1["SecretAccessKey"]).list_objects_v2(Bucket=BUCKET)

        out, _ = proc.communicate(timeout=480)
        assert proc.returncode == 0, out[-4000:]
        after = checkpoints(s3)
        assert after[-1] == 1600 and after[-1] > before[-1], (before, after)
        used = calls.read_text().split()
        assert k1["AccessKeyId"] in used and k2["AccessKeyId"] in used  # both keys came from the chain
        print(f"revoked the first key at checkpoint {before[-1]}; run checkpointed to {after[-1]}")
    finally:
        moto.stop()
