"""What the chart renders to expose and watch the gateways, when asked and only then: an
Ingress and a Gateway API HTTPRoute for the public paths only, a PrometheusRule whose every
expression parses as PromQL, and a Grafana dashboard ConfigMap whose every query does too.
(The gateway's and the operator's own tests check that the metric names exist.)
"""

from __future__ import annotations

import json

import jsonschema
import promql_parser
import pytest
import yaml

from conftest import CHART, RELEASE, load_values, of_kind, one, render, required_values, strip

PUBLIC = ["/events", "/v1/", "/client/"]
PRIVATE = ["/metrics", "/stats", "/healthz", "/readyz", "/dashboard"]
RULES = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
DASHBOARD = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def test_nothing_is_exposed_or_watched_by_default():
    kinds = [o["kind"] for o in render(required_values())]
    assert not {"Ingress", "HTTPRoute", "PrometheusRule"} & set(kinds)
    assert "ConfigMap" not in kinds


def test_the_ingress_routes_the_public_paths_with_streaming_settings():
    objects = render(load_values(CHART / "ci" / "exposed-values.yaml"))
    ingress = one(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "herald-tls", "hosts": ["push.example.com"]}]
    (rule,) = spec["rules"]
    assert rule["host"] == "push.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == PUBLIC
    for path in rule["http"]["paths"]:
        assert path["pathType"] == "Prefix"
        assert path["backend"] == {"service": {"name": RELEASE, "port": {"name": "http"}}}
    assert not any(p["path"].startswith(tuple(PRIVATE)) for p in rule["http"]["paths"])


HTTP_ROUTE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["parentRefs", "rules"],
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["name"]},
                },
                "hostnames": {"type": "array", "items": {"type": "string"}},
                "rules": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "path": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                                "value": {"type": "string", "pattern": "^/"},
                                            },
                                        }
                                    },
                                },
                            },
                            "backendRefs": {
                                "type": "array",
                                "items": {"type": "object", "required": ["name", "port"]},
                            },
                            "timeouts": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"request": {"type": "string"}, "backendRequest": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_the_http_route_routes_the_public_paths_without_a_request_timeout():
    route = one(render(load_values(CHART / "ci" / "exposed-values.yaml")), "HTTPRoute")
    jsonschema.validate(strip(route), HTTP_ROUTE_SCHEMA)
    spec = route["spec"]
    assert spec["parentRefs"] == [{"name": "public", "namespace": "gateway-system"}]
    (rule,) = spec["rules"]
    assert [m["path"]["value"] for m in rule["matches"]] == PUBLIC
    assert rule["backendRefs"] == [{"name": RELEASE, "port": 80}]
    assert rule["timeouts"] == {"request": "0s"}


def test_an_http_route_without_a_gateway_is_refused():
    from helm_python import HelmError

    values = required_values()
    values["httpRoute"] = {"enabled": True}
    with pytest.raises(HelmError, match="httpRoute.parentRefs"):
        render(values)


def exprs_of_rules(rules: dict) -> list[str]:
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_prometheus_rule_carries_every_alert_and_each_parses():
    objects = render(load_values(CHART / "ci" / "monitoring-values.yaml"))
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == RULES
    alerts = [r for g in RULES["groups"] for r in g["rules"]]
    assert len(alerts) >= 8
    for alert in alerts:
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        promql_parser.parse(alert["expr"])


def test_an_expression_that_is_not_promql_fails_the_parse():
    with pytest.raises(Exception):
        promql_parser.parse("sum(rate(herald_frames_sent_total[5m]) >")


def test_the_grafana_dashboard_config_map_holds_the_dashboard():
    objects = render(load_values(CHART / "ci" / "monitoring-values.yaml"))
    (cm,) = [c for c in of_kind(objects, "ConfigMap")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Herald"}
    dashboard = json.loads(cm["data"]["herald.json"])
    assert dashboard == DASHBOARD
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 10
    for q in queries:
        promql_parser.parse(q)
