"""The chart lints strictly, renders with every value set, and every rendered object is valid:
built-in kinds against Kubernetes' own schemas (kubernetes-validate, strict), RealtimeGateways
against the generated CRD's schema, ServiceMonitors against a minimal schema of their own.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART,
    NAMESPACE,
    crd,
    load_values,
    one,
    operator_binary,
    render,
    required_values,
    strip,
    value_set_params,
)

KUBE_VERSION = kubernetes_validate.latest_version()

VALID = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())

# Kinds that are custom resources: validated here against their own schemas, not skipped.
CUSTOM_GROUPS = {"herald.dev", "monitoring.coreos.com", "gateway.networking.k8s.io"}


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


@pytest.mark.parametrize("values", value_set_params())
def test_lint_strict(values):
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not problems, json.dumps(report, indent=2)


@pytest.mark.parametrize("values", value_set_params())
def test_builtin_objects_are_valid_kubernetes(values):
    checked, problems = 0, []
    for obj in render(values):
        body = strip(obj)
        where = f"{obj['_template']}: {body['kind']} {body['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            if group_of(body["apiVersion"]) not in CUSTOM_GROUPS:
                problems.append(f"{where}: no schema for {body['apiVersion']}: not a Kubernetes kind")
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}")
    assert not problems, "\n".join(problems)
    assert checked >= 8


def test_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(crd(), KUBE_VERSION, strict=True)
    assert crd()["spec"]["names"]["shortNames"] == ["rtgw"]


def test_crds_are_shipped_by_the_chart():
    from conftest import chart

    shipped = chart().crds
    assert [c["name"] for c in shipped] == ["crds/realtimegateways.yaml"]
    assert yaml.safe_load(shipped[0]["data"])["metadata"]["name"] == "realtimegateways.herald.dev"


def strict_crd_schema(schema: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema that rejects unknown fields (the API server
    would silently prune them: a typo in values would vanish) and honours `nullable`."""
    if isinstance(schema, dict):
        out = {k: strict_crd_schema(v) for k, v in schema.items() if k not in ("nullable",)}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_crd_schema(v) for v in schema]
    return schema


def rtgw_validator() -> jsonschema.Draft7Validator:
    version = crd()["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    spec_schema = strict_crd_schema(root["properties"]["spec"])
    return jsonschema.Draft7Validator(spec_schema)


@pytest.mark.parametrize("values", value_set_params())
def test_realtimegateway_matches_the_generated_crd(values):
    rtgws = [o for o in render(values) if o["kind"] == "RealtimeGateway"]
    assert len(rtgws) == 1
    c = crd()
    served = [v["name"] for v in c["spec"]["versions"] if v["served"]]
    for obj in rtgws:
        assert obj["apiVersion"] == f"{c['spec']['group']}/{served[0]}"
        assert set(obj) - {"_template"} == {"apiVersion", "kind", "metadata", "spec"}
        errors = sorted(rtgw_validator().iter_errors(obj["spec"]), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"spec.{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_crd_schema_check_can_fail():
    """The RealtimeGateway check above rejects what the API server would reject or prune."""
    v = rtgw_validator()
    good = next(o for o in render(copy.deepcopy(VALID)) if o["kind"] == "RealtimeGateway")["spec"]
    assert v.is_valid(good)
    for bad in (
        {**good, "replicas": {"min": 0, "max": 3}},
        {**good, "replicas": {"min": 1}},
        {**good, "targetConnectionsPerPod": "many"},
        {**good, "drainSeconds": 7200},
        {**good, "typo": 1},
        {k: v for k, v in good.items() if k != "nats"},
    ):
        assert not v.is_valid(bad), bad


# The fields of a ServiceMonitor this chart uses, as the Prometheus Operator's CRD types them.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    },
                },
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("values", value_set_params())
def test_service_monitors_are_valid(values):
    for obj in render(values):
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(strip(obj), SERVICE_MONITOR_SCHEMA)


def test_operator_accepts_the_rendered_realtimegateways(tmp_path):
    """The operator's own serde types read every rendered RealtimeGateway (`herald-operator
    plan`), and decide a replica count within the bounds."""
    binary = operator_binary()
    if binary is None:
        pytest.skip("herald-operator is not built (cargo build -p herald-operator)")
    from conftest import VALUE_SETS

    for name, values in VALUE_SETS.items():
        rtgw = next(o for o in render(copy.deepcopy(values)) if o["kind"] == "RealtimeGateway")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(strip(rtgw)))
        r = subprocess.run(
            [binary, "plan", "--resource", path, "--current", "1", "--connections", "0", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, f"{name}: {r.stderr}"
        desired = json.loads(r.stdout)["desired"]
        bounds = rtgw["spec"]["replicas"]
        assert bounds["min"] <= desired <= bounds["max"], (name, desired)


def test_operator_env_vars_are_its_flags_twins():
    """Every HERALD_OPERATOR_* variable the chart sets is one `herald-operator run` reads."""
    binary = operator_binary()
    if binary is None:
        pytest.skip("herald-operator is not built (cargo build -p herald-operator)")
    helptext = subprocess.run(
        [binary, "run", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    from conftest import VALUE_SETS

    for values in VALUE_SETS.values():
        dep = next(o for o in render(copy.deepcopy(values)) if o["kind"] == "Deployment")
        for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
            if env["name"] != "RUST_LOG":
                assert f"[env: {env['name']}=" in helptext, env["name"]


def operator_render(rtgw: dict, tmp_path) -> list[dict]:
    """The objects the operator applies for `rtgw` (`herald-operator render`)."""
    binary = operator_binary()
    if binary is None:
        pytest.skip("herald-operator is not built (cargo build -p herald-operator)")
    path = tmp_path / "rtgw.yaml"
    path.write_text(yaml.safe_dump(strip(rtgw)))
    r = subprocess.run(
        [binary, "render", "--resource", path], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("values", value_set_params())
def test_the_objects_the_operator_applies_are_valid_kubernetes(values, tmp_path):
    rtgw = one(render(values), "RealtimeGateway")
    objects = operator_render(rtgw, tmp_path)
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "PodDisruptionBudget"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_gateway_pod_and_service_values_reach_the_pods(tmp_path):
    values = load_values(CHART / "ci" / "shaped-pods-values.yaml")
    rtgw = one(render(copy.deepcopy(values)), "RealtimeGateway")
    assert rtgw["spec"]["pod"] == values["gateway"]["pod"]
    assert rtgw["spec"]["service"] == values["gateway"]["service"]
    deployment, service, _ = operator_render(rtgw, tmp_path)
    template = deployment["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    shaped = values["gateway"]["pod"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["HERALD_PUBLISH_RETRY_SECS"] == "30"
    assert container["envFrom"] == shaped["envFrom"]
    assert template["metadata"]["annotations"] == shaped["annotations"]
    assert template["metadata"]["labels"]["team"] == "realtime"
    for field in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "imagePullSecrets",
        "serviceAccountName",
        "priorityClassName",
    ):
        assert pod[field] == shaped[field], field
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == values["gateway"]["service"]["annotations"]
    # Nothing of the shape when nothing is set.
    plain = one(render(required_values()), "RealtimeGateway")
    assert "pod" not in plain["spec"] and "service" not in plain["spec"]
