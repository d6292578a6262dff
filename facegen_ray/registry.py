"""Model registry: `<root>/models/registry.json` plus one model directory per version.

    {"serving": "v3" | null,
     "versions": {"v3": {"uri": ".../models/v3", "status": "serving|candidate|retired",
                         "created": iso, "source": "run name or uri", "metrics": {...},
                         "promoted": iso | null}},
     "history": [{"time": iso, "event": "register|promote", "version": "v3"}]}

A MODEL argument anywhere in the CLI is a model directory URI or a registry version
(or `serving` / `latest`); `resolve()` turns it into a model directory URI.
Single writer: registry updates come from the CLI or the admin route, one at a time.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from facegen_ray.storage import Layout, Storage, join, normalize

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_MARKER = "model.json"  # every model directory holds this file


class RegistryError(ValueError):
    """A registry request a user made cannot be satisfied (unknown version, bad name...)."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, storage: Storage, root: str):
        self.storage = storage
        self.layout = Layout(root)

    def load(self) -> dict[str, Any]:
        uri = self.layout.registry()
        if not self.storage.exists(uri):
            return {"serving": None, "versions": {}, "history": []}
        data = self.storage.read_json(uri)
        data.setdefault("serving", None)
        data.setdefault("versions", {})
        data.setdefault("history", [])
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.storage.write_json(self.layout.registry(), data)

    @staticmethod
    def check_version(version: str) -> str:
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise RegistryError(
                f"invalid model version {version!r}: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
            )
        return version

    def versions(self) -> dict[str, dict[str, Any]]:
        return self.load()["versions"]

    def get(self, version: str) -> dict[str, Any]:
        data = self.load()
        if version not in data["versions"]:
            known = ", ".join(sorted(data["versions"])) or "none registered yet"
            raise RegistryError(f"unknown model version {version!r} (known: {known})")
        return data["versions"][version]

    def serving(self) -> str | None:
        return self.load()["serving"]

    def next_version(self) -> str:
        """v<N+1> over the versions named v<number>."""
        nums = [int(v[1:]) for v in self.versions() if re.fullmatch(r"v\d+", v)]
        return f"v{max(nums, default=0) + 1}"

    def register(
        self,
        model_uri: str,
        version: str | None = None,
        *,
        source: str | None = None,
        metrics: dict[str, Any] | None = None,
        copy: bool = True,
    ) -> str:
        """Add a model directory as a candidate version. Copies it under <root>/models/<version>/
        unless it is already there. Returns the version name."""
        model_uri = normalize(model_uri)
        if not self.storage.exists(join(model_uri, MODEL_MARKER)):
            raise RegistryError(f"{model_uri} is not a model directory (no {MODEL_MARKER})")
        data = self.load()
        version = self.check_version(version or self.next_version())
        if version in data["versions"]:
            raise RegistryError(f"model version {version!r} already exists; pick another name")
        dest = self.layout.model(version)
        if copy and normalize(dest) != model_uri:
            self.storage.copy_tree(model_uri, dest)
        else:
            dest = model_uri
        data["versions"][version] = {
            "uri": dest,
            "status": "candidate",
            "created": _now(),
            "source": source or model_uri,
            "metrics": metrics or {},
            "promoted": None,
        }
        data["history"].append({"time": _now(), "event": "register", "version": version})
        self._save(data)
        return version

    def set_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        data = self.load()
        if version not in data["versions"]:
            raise RegistryError(f"unknown model version {version!r}")
        data["versions"][version]["metrics"].update(metrics)
        self._save(data)

    def promote(self, version: str) -> dict[str, Any]:
        """Make `version` the serving model; the previous serving version becomes retired."""
        data = self.load()
        if version not in data["versions"]:
            known = ", ".join(sorted(data["versions"])) or "none registered yet"
            raise RegistryError(f"unknown model version {version!r} (known: {known})")
        prev = data["serving"]
        if prev and prev != version and prev in data["versions"]:
            data["versions"][prev]["status"] = "retired"
        data["serving"] = version
        data["versions"][version]["status"] = "serving"
        data["versions"][version]["promoted"] = _now()
        data["history"].append({"time": _now(), "event": "promote", "version": version, "previous": prev})
        self._save(data)
        return data["versions"][version]

    def resolve(self, ref: str) -> tuple[str, str]:
        """MODEL argument -> (model directory URI, version label).

        `serving` / `latest` / a registered version name -> its directory; anything else is
        taken as a model directory URI (its version label is read from its model.json later).
        """
        data = self.load()
        if ref in ("serving", "latest"):
            if ref == "serving":
                version = data["serving"]
                if not version:
                    raise RegistryError("no model is serving yet: run `facegen promote VERSION` first")
            else:
                if not data["versions"]:
                    raise RegistryError("the registry is empty: train a model first (`facegen train`)")
                version = max(data["versions"], key=lambda v: data["versions"][v]["created"])
            return data["versions"][version]["uri"], version
        if ref in data["versions"]:
            return data["versions"][ref]["uri"], ref
        uri = normalize(ref)
        if self.storage.exists(join(uri, MODEL_MARKER)):
            return uri, ""
        raise RegistryError(
            f"{ref!r} is neither a registered model version nor a model directory (looked for {join(uri, MODEL_MARKER)})"
        )
