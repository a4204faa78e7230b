"""Shared helpers of the chart tests: render the chart offline with the Helm 4 SDK
(helm-python-sdk, no helm binary), split the output into Kubernetes objects, and load the
generated CRD's schema.
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "herald"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CRD_FILE = CHART / "crds" / "realtimegateways.yaml"

RELEASE = "herald"
NAMESPACE = "herald-system"

# The values a user must give; the same as the `--set` flags docs/helm.md shows.
REQUIRED_SET = (
    "nats.url=nats://nats.nats.svc.cluster.local:4222,"
    "auth.jwtSecret=set-jwt-secret-0123456789abcdef0123,"
    "auth.publishKeys[0].name=backend,"
    "auth.publishKeys[0].secret=set-publish-key-0123456789abcdef"
)


def required_values() -> dict[str, Any]:
    """The default values plus the required ones, parsed as `helm --set` parses them."""
    return helm.parse_set_string(REQUIRED_SET)


def load_values(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


# Every way the chart is rendered in these tests: id -> user-supplied values.
VALUE_SETS: dict[str, dict[str, Any]] = {"defaults+set": required_values()}
VALUE_SETS.update({p.stem: load_values(p) for p in CI_VALUES})


def value_set_params():
    return [pytest.param(copy.deepcopy(v), id=k) for k, v in VALUE_SETS.items()]


_chart: helm.Chart | None = None


def chart() -> helm.Chart:
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(CHART)
    return _chart


def render_raw(values: dict[str, Any] | None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template --namespace herald-system herald`."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (test hooks included), in template order."""
    objects = []
    for path, text in sorted(render_raw(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                doc["_template"] = path
                objects.append(doc)
    return objects


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the test's bookkeeping key."""
    return {k: v for k, v in obj.items() if k != "_template"}


def notes(values: dict[str, Any]) -> str:
    return next(t for p, t in render_raw(values).items() if p.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def operator_binary() -> pathlib.Path | None:
    """The built herald-operator, if there is one: $HERALD_OPERATOR_BIN, target/, or PATH."""
    candidates = [os.environ.get("HERALD_OPERATOR_BIN")]
    candidates += [str(REPO / "target" / p / "herald-operator") for p in ("debug", "release")]
    candidates.append(shutil.which("herald-operator"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return pathlib.Path(c)
    return None
