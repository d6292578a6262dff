"""`facegen cluster up|status|kill-host|partition|add-host|exec|down`: a multi-host Ray cluster on
one Linux machine (each host a network namespace with its own /tmp and HOME, the checkout
read-only, a moto S3 server on the bridge as the only shared storage). Needs root.

    facegen cluster up --hosts 3          # host 0 = Ray head (no CPUs), hosts 1.. = workers
    ray job submit --address http://10.213.0.1:8265 -- facegen train --root s3://facegen/demo ...
    facegen cluster kill-host 2           # SIGKILL every process of host 2
    facegen cluster add-host              # a replacement worker joins
    facegen cluster partition 1 --seconds 30
    facegen cluster exec 0 -- ray status  # a command on host 0
    facegen cluster down                  # every namespace, link and process it made
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.cluster import local


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help="a multi-host Ray cluster on this Linux machine (network namespaces; root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="fg", help="cluster name: prefixes namespaces and links (default fg)")
    common.add_argument("--state", default=None, help="state file (default /run/facegen-cluster/<name>.json)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, parents=[common])

    u = verb("up", "build the cluster")
    u.add_argument("--hosts", type=int, default=3, help="hosts, the head included (default 3)")
    u.add_argument("--subnet", default="10.213.0.0/24", help="private /24 for the bridge (default 10.213.0.0/24)")
    u.add_argument("--cpus", type=float, default=2, help="logical CPUs per worker host (default 2)")
    u.add_argument(
        "--head-cpus",
        type=float,
        default=None,
        help="logical CPUs of the head (default 0: no work; --cpus with --hosts 1)",
    )
    u.add_argument("--no-ray", action="store_true", help="namespaces only (no Ray, no S3): checks the plumbing")
    verb("status", "hosts, their addresses and processes; the submit line")
    verb("down", "remove every namespace, link and process the cluster made")
    verb("add-host", "a new worker host joins")
    k = verb("kill-host", "SIGKILL every process of host N, remove its namespace")
    k.add_argument("index", type=int)
    pa = verb("partition", "host N's link down for S seconds")
    pa.add_argument("index", type=int)
    pa.add_argument("--seconds", type=float, default=30)
    e = verb("exec", "run a command on host N (after --)")
    e.add_argument("index", type=int)
    e.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state_file = args.state or local.default_state_file(args.name)
    if args.verb == "up":
        state = local.new_state(
            args.name,
            args.subnet,
            state_file,
            cpus_per_host=args.cpus,
            head_cpus=args.head_cpus if args.head_cpus is not None else (0 if args.hosts > 1 else args.cpus),
            with_ray=not args.no_ray,
        )
        local.up(args.hosts, state, with_s3=not args.no_ray)
        print(local.summary(state))
        return 0
    local.check_prerequisites()
    state = local.ClusterState.load(state_file)
    if args.verb == "down":
        local.down(state)
        print(f"[facegen] cluster {state.name!r} removed ({len(state.hosts)} hosts)")
    elif args.verb == "status":
        for row in local.status(state):
            print(json.dumps(row))
        print(local.summary(state))
    elif args.verb == "add-host":
        host = local.add_host(state)
        print(f"[facegen] host {host.index} ({host.ip}) joined")
    elif args.verb == "kill-host":
        n = local.kill_host(state, args.index)
        print(f"[facegen] host {args.index} killed ({n} processes)")
    elif args.verb == "partition":
        local.partition(state, args.index, args.seconds)
        print(f"[facegen] host {args.index} was cut off for {args.seconds:g}s")
    elif args.verb == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise local.ClusterError("exec: give a command after --")
        return local.run_on(state, args.index, argv).returncode
    return 0
