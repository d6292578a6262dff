"""Model registry: `<root>/models/registry.json` plus one model directory per version.

    {"serving": "v3" | null,
     "versions": {"v3": {"uri": ".../models/v3", "status": "serving|candidate|retired",
                         "created": iso, "source": "run name or uri", "metrics": {...},
                         "promoted": iso | null}},
     "history": [{"time": iso, "event": "register|promote", "version": "v3"}]}

A MODEL argument anywhere in the CLI is a model directory URI or a registry version
(or `serving` / `latest`); `resolve()` turns it into a model directory URI.
Several writers (hosts registering and promoting at once) are safe: every update re-reads
registry.json and writes it back with a conditional write (S3 If-Match / If-None-Match, a
locked compare locally), retrying when another writer got there first; a version name is
claimed with an exclusive create under models/.claims/ before its files are copied.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from facegen_ray.storage import Layout, Storage, join, normalize

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_MARKER = "model.json"  # every model directory holds this file


T = TypeVar("T")
CAS_ATTEMPTS = 50  # conditional-write retries before a writer gives up (each waits a little longer)


class RegistryError(ValueError):
    """A registry request a user made cannot be satisfied (unknown version, bad name...)."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, storage: Storage, root: str):
        self.storage = storage
        self.layout = Layout(root)

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any]:
        data = json.loads(raw) if raw else {}
        data.setdefault("serving", None)
        data.setdefault("versions", {})
        data.setdefault("history", [])
        return data

    def load(self) -> dict[str, Any]:
        return self._parse(self.storage.read_versioned(self.layout.registry())[0])

    def _update(self, mutate: Callable[[dict[str, Any]], T]) -> T:
        """Read registry.json, apply `mutate` (it may raise RegistryError: nothing is written),
        write it back only if no other writer changed it meanwhile; else start over."""
        uri = self.layout.registry()
        for attempt in range(CAS_ATTEMPTS):
            raw, token = self.storage.read_versioned(uri)
            data = self._parse(raw)
            result = mutate(data)
            body = (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
            if self.storage.write_if(uri, body, token):
                return result
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # another writer won: back off, retry
        raise RegistryError(f"{uri} changed under every one of {CAS_ATTEMPTS} attempts to update it; try again")

    def _claim(self, version: str) -> bool:
        """Reserve a version name for this writer (exclusive create); False if taken."""
        marker = join(self.layout.models(), ".claims", version)
        return self.storage.create_exclusive(marker, _now().encode())

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
        if version is None:  # v<N+1>, or the next number no concurrent writer has claimed
            n = int(self.next_version()[1:])
            while not self._claim(f"v{n}") or f"v{n}" in self.versions():
                n += 1
            version = f"v{n}"
        else:
            self.check_version(version)
            if version in self.versions() or not self._claim(version):
                raise RegistryError(f"model version {version!r} already exists; pick another name")
        dest = self.layout.model(version)
        if copy and normalize(dest) != model_uri:
            self.storage.copy_tree(model_uri, dest)
        else:
            dest = model_uri

        def add(data: dict[str, Any]) -> str:
            if version in data["versions"]:
                raise RegistryError(f"model version {version!r} already exists; pick another name")
            data["versions"][version] = {
                "uri": dest,
                "status": "candidate",
                "created": _now(),
                "source": source or model_uri,
                "metrics": metrics or {},
                "promoted": None,
            }
            data["history"].append({"time": _now(), "event": "register", "version": version})
            return version

        return self._update(add)

    def set_metrics(self, version: str, metrics: dict[str, Any]) -> None:

        def apply(data: dict[str, Any]) -> None:
            if version not in data["versions"]:
                raise RegistryError(f"unknown model version {version!r}")
            data["versions"][version]["metrics"].update(metrics)

        self._update(apply)

    def promote(self, version: str) -> dict[str, Any]:
        """Make `version` the serving model; the previous serving version becomes retired."""

        def apply(data: dict[str, Any]) -> dict[str, Any]:
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
            return data["versions"][version]

        return self._update(apply)

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
