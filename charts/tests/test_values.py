"""values.schema.json: a valid draft-07 schema that accepts the chart's own values and every ci
file, rejects wrong types and unknown keys (Helm refuses to render them), and describes every
key of values.yaml.
"""

from __future__ import annotations

import copy
import json

import helm_python as helm
import jsonschema
import pytest
import yaml

from conftest import CHART, VALUE_SETS, chart, render, required_values

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def test_schema_is_draft_07():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_schema_accepts_the_chart_values(name):
    merged = chart().merge_values(copy.deepcopy(VALUE_SETS[name]))
    jsonschema.Draft7Validator(SCHEMA).validate(merged)
    chart().validate_schema(copy.deepcopy(VALUE_SETS[name]))


def test_schema_accepts_the_defaults():
    jsonschema.Draft7Validator(SCHEMA).validate(DEFAULTS)


BAD_VALUES = {
    "string replicas.min": {"gateway": {"replicas": {"min": "two"}}},
    "zero replicas.min": {"gateway": {"replicas": {"min": 0}}},
    "unknown top-level key": {"replicaCount": 3},
    "unknown gateway key": {"gateway": {"replicas": {"min": 1, "max": 2}, "autoscaling": True}},
    "string flag": {"serviceMonitor": {"enabled": "yes"}},
    "drainSeconds over an hour": {"gateway": {"drainSeconds": 7200}},
    "short publisher key": {"auth": {"publishKeys": [{"name": "backend", "secret": "short"}]}},
    "publisher key name with a colon": {
        "auth": {"publishKeys": [{"name": "a:b", "secret": "0123456789abcdef0123"}]}
    },
    "bad log format": {"gateway": {"settings": {"logFormat": "xml"}}},
    "heartbeat zero": {"gateway": {"settings": {"heartbeatSecs": 0}}},
    "image pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "url not a string": {"nats": {"url": 4222}},
    "any origin": {"gateway": {"settings": {"allowedOrigins": ["*"]}}},
    "an origin without its scheme": {"gateway": {"settings": {"allowedOrigins": ["app.example.com"]}}},
    "an origin with a path": {"gateway": {"settings": {"allowedOrigins": ["https://app.example.com/"]}}},
    "history kept for no time": {"gateway": {"settings": {"historyMaxAge": "0"}}},
}


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(bad, tmp_path):
    values = required_values()
    for key, value in bad.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    # As a values file, the way `helm install -f bad.yaml` reads it.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(helm.HelmValuesError, match="don't meet the specifications of the schema"):
        render(helm.values_from_yaml(path.read_text()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(chart().merge_values(copy.deepcopy(values)))


def key_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from key_paths(v, prefix + (k,))


FREE_FORM = {"resources", "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe",
             "podAnnotations", "podLabels", "nodeSelector", "affinity", "commonLabels", "labels",
             "annotations"}


def test_schema_describes_every_value():
    for path in key_paths(DEFAULTS):
        if set(path[:-1]) & FREE_FORM:
            continue
        node = SCHEMA
        for key in path:
            assert key in node.get("properties", {}), f"values.yaml key {'.'.join(path)} is not in values.schema.json"
            node = node["properties"][key]


def test_values_yaml_is_commented():
    """values.yaml is banner-sectioned, and every key has a comment right above it or sits in a
    block whose key has one (banners name sections; they document no key)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    banners = [line for line in lines if line.startswith("####")]
    assert len(banners) >= 16
    documented: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    previous = ""
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            previous = stripped
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("- ") or ":" not in stripped:
            previous = stripped
            continue
        while documented and documented[-1][0] >= indent:
            documented.pop()
        # A banner documents the top-level key of its section, and nothing deeper.
        commented = previous.startswith("#") and (indent == 0 or not previous.startswith("##"))
        ok = commented or any(d for _, d in documented)
        if not ok:
            undocumented.append(line)
        documented.append((indent, ok))
        previous = stripped
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


def test_the_chart_readme_is_current():
    """charts/herald/README.md is generated from Chart.yaml and values.yaml."""
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart-readme"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("gateway.pod.env", "ingress.enabled", "monitoring.prometheusRule.enabled", "auth.jwksUrls"):
        assert f"| `{key}` |" in readme, key


def test_artifact_hub_annotations_describe_the_chart():
    from conftest import crd

    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    notes = meta["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    assert notes["artifacthub.io/operator"] == "true"
    (image,) = yaml.safe_load(notes["artifacthub.io/images"])
    assert image["image"].endswith(":" + meta["appVersion"])
    (described,) = yaml.safe_load(notes["artifacthub.io/crds"])
    definition = crd()
    assert described["name"] == definition["metadata"]["name"]
    assert described["kind"] == definition["spec"]["names"]["kind"]
    assert described["version"] == definition["spec"]["versions"][0]["name"]
    from test_render import rtgw_validator

    for example in yaml.safe_load(notes["artifacthub.io/crdsExamples"]):
        errors = list(rtgw_validator().iter_errors(example["spec"]))
        assert not errors, [e.message for e in errors]
