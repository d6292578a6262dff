"""`facegen dashboards push|export`: the Grafana dashboards for facegen's Prometheus metrics.

  facegen dashboards push --grafana-url http://grafana:3000 [--token GRAFANA_TOKEN] [--folder facegen]
      creates the folder if missing and creates or overwrites the serving and training
      dashboards in it (by uid), then prints their URLs. --token names an environment variable
      or a file that holds a Grafana service account token (default: $GRAFANA_TOKEN); without
      one, user:password in the URL is used (http://admin:admin@host:3000).
  facegen dashboards export DIR
      writes DIR/serving.json and DIR/training.json (for Grafana's file provisioning or a
      manual import).

The dashboards query the metrics Ray exports from every node (ray_facegen_serve_*,
ray_facegen_train_*): point a Prometheus at the nodes first (cluster/prometheus.yaml).
"""

from __future__ import annotations

import argparse

from facegen_ray.commands._common import add_action_parsers, add_config_args, config_from_args
from facegen_ray.observability.grafana import export_dashboards, public_url, push_dashboards, resolve_token
from facegen_ray.storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    dsub = add_action_parsers(
        sub, "dashboards", "push the Grafana dashboards (serving, training) or export them", __doc__
    )

    push = dsub.add_parser("push", help="create/overwrite the dashboards in a Grafana folder")
    push.add_argument(
        "--grafana-url", required=True, metavar="URL", help="Grafana base URL, e.g. http://127.0.0.1:3000"
    )
    push.add_argument(
        "--token",
        default=None,
        metavar="ENV_OR_FILE",
        help="environment variable name or file holding the API token (default: $GRAFANA_TOKEN)",
    )
    push.add_argument("--folder", default="facegen", metavar="NAME", help="Grafana folder title (created if missing)")
    push.add_argument("--timeout", type=float, default=10.0, help="seconds per Grafana API call")
    push.set_defaults(func=run_push)

    export = dsub.add_parser("export", help="write the dashboard JSON files to a folder (local or s3://)")
    export.add_argument("dest", metavar="DIR", help="destination folder URI")
    add_config_args(export)
    export.set_defaults(func=run_export)


def run_push(args: argparse.Namespace) -> int:
    token = resolve_token(args.token)
    results = push_dashboards(args.grafana_url, token=token, folder=args.folder, timeout=args.timeout)
    print(f"[facegen] pushed {len(results)} dashboards to {public_url(args.grafana_url)} (folder {args.folder!r})")
    for r in results:
        print(f"  {r.name:<9} {r.title} (uid {r.uid}, version {r.version}): {r.url}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    for uri in export_dashboards(Storage(cfg.storage), args.dest):
        print(uri)
    return 0
