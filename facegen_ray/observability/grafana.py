"""The Grafana dashboards shipped with facegen (observability/dashboards/*.json) and pushing them
to a Grafana server with grafana-client.

The JSON files are Grafana dashboard models whose PromQL queries use the metric names Ray
exports for facegen_ray.observability.metrics (see `MetricSpec.series`); each has a
`datasource` variable, so they work with any Prometheus data source that scrapes the Ray nodes.
`push_dashboards` creates the folder if missing and upserts every dashboard by uid
(overwrite=True), so pushing again replaces the previous version.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from facegen_ray.errors import UserError
from facegen_ray.storage import join

# Imported where used, not here: grafana_client, niquests: only pushing to a Grafana server needs
# them; exporting the JSON does not.

DASHBOARD_NAMES = ("serving", "training")
DEFAULT_FOLDER = "facegen"
TOKEN_ENV = "GRAFANA_TOKEN"

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def load_dashboard(name: str) -> dict[str, Any]:
    """The dashboard model `name` (serving | training) as stored in the package."""
    if name not in DASHBOARD_NAMES:
        raise UserError(f"unknown dashboard {name!r}: one of {', '.join(DASHBOARD_NAMES)}")
    text = resources.files("facegen_ray.observability").joinpath(f"dashboards/{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {name: load_dashboard(name) for name in DASHBOARD_NAMES}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) of every query target of every panel."""
    return [
        (p.get("title", ""), t["expr"]) for p in iter_panels(dashboard) for t in p.get("targets", []) if "expr" in t
    ]


def metric_names_in(expr: str) -> set[str]:
    """The Ray-exported metric names (ray_...) a PromQL expression refers to. Label values in
    quotes are skipped; our metrics all start with `ray_`, PromQL functions and keywords never do."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {m for m in _IDENT.findall(unquoted) if m.startswith("ray_")}


def export_dashboards(storage, dest_uri: str) -> list[str]:
    """Write <dest>/<name>.json for every dashboard; -> the URIs written."""
    out = []
    for name, dash in load_dashboards().items():
        uri = join(dest_uri, f"{name}.json")
        storage.write_text(uri, json.dumps(dash, indent=2) + "\n")
        out.append(uri)
    return out


def resolve_token(source: str | None) -> str | None:
    """The Grafana API token from `source`: a file holding it, or the name of an environment
    variable that holds it. Without a source: $GRAFANA_TOKEN if set, else None (then the URL's
    user:password, if any, is used). The token itself never goes on the command line."""
    if source is None:
        return os.environ.get(TOKEN_ENV) or None
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise UserError(f"--token file {source} is empty")
        return token
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", source):
        token = os.environ.get(source, "").strip()
        if token:
            return token
        raise UserError(f"--token {source}: environment variable {source} is not set (or empty)")
    raise UserError(
        f"--token {source!r} is neither a file nor an environment variable name: "
        "pass the NAME of a variable holding the token, or a file path (never the token itself)"
    )


def public_url(url: str) -> str:
    """`url` without user:password (for printing)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class PushResult:
    """One dashboard as Grafana stored it."""

    name: str
    uid: str
    title: str
    url: str  # absolute URL of the dashboard
    version: int | None
    status: str


def _grafana_error(e: Exception, url: str) -> UserError:
    from grafana_client.client import (
        GrafanaClientError,
        GrafanaException,
        GrafanaUnauthorizedError,
    )

    where = public_url(url)
    if isinstance(e, GrafanaUnauthorizedError):
        return UserError(
            f"Grafana at {where} refused the credentials (401 Unauthorized): pass a valid service "
            f"account token with --token (an env var name or file; default ${TOKEN_ENV})"
        )
    if isinstance(e, GrafanaClientError) and e.status_code == 403:
        return UserError(
            f"Grafana at {where} answered 403 Forbidden: the token needs the Editor role (folders and dashboards write)"
        )
    if isinstance(e, GrafanaException):
        if e.status_code == 0:
            return UserError(f"cannot reach Grafana at {where}: {e.message}")
        return UserError(f"Grafana at {where} answered {e.status_code}: {e.message}")
    return UserError(f"cannot reach Grafana at {where}: {e}")


def _api(url: str, token: str | None, timeout: float):
    from grafana_client import GrafanaApi, TokenAuth

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--grafana-url {url!r}: expected http(s)://HOST[:PORT][/PATH]")
    return GrafanaApi.from_url(url, credential=TokenAuth(token) if token else None, timeout=timeout)


def ensure_folder(api, title: str) -> str:
    """The uid of the folder titled `title`, created if there is none."""
    for f in api.folder.get_all_folders() or []:
        if f.get("title") == title:
            return str(f["uid"])
    created = api.folder.create_folder(title)
    return str(created["uid"])


def push_dashboards(
    url: str,
    token: str | None = None,
    folder: str = DEFAULT_FOLDER,
    timeout: float = 10.0,
    names: tuple[str, ...] = DASHBOARD_NAMES,
) -> list[PushResult]:
    """Create `folder` in the Grafana at `url` if missing and upsert the dashboards into it.

    Raises UserError with a clear message when Grafana is unreachable or refuses the request."""
    import niquests
    from grafana_client.client import GrafanaException

    api = _api(url, token, timeout)
    base = url if url.endswith("/") else url + "/"
    try:
        api.client.GET("/health")  # reachable and really a Grafana (no auth needed)
        folder_uid = ensure_folder(api, folder)
        results = []
        for name in names:
            dash = copy.deepcopy(load_dashboard(name))
            dash["id"] = None  # upsert by uid
            resp = api.dashboard.update_dashboard(
                {
                    "dashboard": dash,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": f"facegen dashboards push ({name})",
                }
            )
            rel = str(resp.get("url") or f"/d/{dash['uid']}")
            results.append(
                PushResult(
                    name=name,
                    uid=str(resp.get("uid", dash["uid"])),
                    title=dash["title"],
                    url=public_url(urljoin(base, rel)),
                    version=resp.get("version"),
                    status=str(resp.get("status", "")),
                )
            )
        return results
    except (GrafanaException, niquests.exceptions.RequestException, OSError) as e:
        raise _grafana_error(e, url) from e
