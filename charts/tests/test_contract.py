"""What the chart promises: the operator owns the gateways' replica count, its RBAC is exactly
what it calls, its pod is hardened and wired to its flags, the keys reach the gateways and the
test pod, and NOTES.txt tells the user what to type.
"""

from __future__ import annotations

import base64
import copy

import pytest

from conftest import (
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    load_values,
    notes,
    of_kind,
    one,
    render,
    required_values,
    value_set_params,
    CHART,
)

# ---- who owns the gateways ----------------------------------------------------------------

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"}


@pytest.mark.parametrize("values", value_set_params())
def test_no_gateway_workload_is_rendered(values):
    objects = render(values)
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    assert [o["metadata"]["name"] for o in workloads] == [f"{RELEASE}-operator"]
    (operator,) = workloads
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["herald-operator"]
    for o in objects:
        labels = o["metadata"].get("labels", {})
        if o["kind"] in WORKLOADS | {"Pod"}:
            assert labels.get("app.kubernetes.io/name") != "herald-gateway", o["metadata"]["name"]


def replicas_fields(node, path=""):
    """(path, value) of every key named `replicas` under node."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "replicas":
                yield f"{path}.{k}", v
            yield from replicas_fields(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from replicas_fields(v, f"{path}[{i}]")


@pytest.mark.parametrize("values", value_set_params())
def test_realtimegateway_sets_only_replica_bounds(values):
    rtgw = one(render(values), "RealtimeGateway")
    found = list(replicas_fields(rtgw))
    assert len(found) == 1, found
    path, bounds = found[0]
    assert path == ".spec.replicas"
    assert set(bounds) == {"min", "max"}
    assert all(isinstance(v, int) for v in bounds.values())
    assert 1 <= bounds["min"] <= bounds["max"]


def test_realtimegateway_carries_the_values():
    values = load_values(CHART / "ci" / "custom-resources-values.yaml")
    spec = one(render(values), "RealtimeGateway")["spec"]
    assert spec["image"] == "registry.example.com/platform/herald:0.1.0-rc.1"
    assert spec["imagePullPolicy"] == "Always"
    assert spec["replicas"] == {"min": 3, "max": 40}
    assert spec["targetConnectionsPerPod"] == 20000
    assert spec["maxConnectionsPerPod"] == 25000
    assert spec["scaleUp"] == {"stabilizationSeconds": 30, "maxStep": 8}
    assert spec["scaleDown"] == {"stabilizationSeconds": 900, "maxStep": 2}
    assert spec["drainSeconds"] == 120
    assert spec["resources"]["limits"] == {"cpu": "4", "memory": "4Gi"}
    assert spec["gateway"] == {
        "heartbeatSecs": 20,
        "maxChannels": 64,
        "maxConnectionsPerUser": 10,
        "historyMaxPerSubject": 5000,
        "clientQueueBytes": 2097152,
    }
    assert spec["auth"] == {"jwtSecret": {"name": f"{RELEASE}-auth", "key": "jwt-secret"}}


def test_default_image_is_the_app_version():
    spec = one(render(required_values()), "RealtimeGateway")["spec"]
    assert spec["image"] == "ghcr.io/herald-push/herald:0.1.0"
    assert "gateway" not in spec  # unset settings keep the gateway's defaults


# ---- RBAC: exactly the calls the operator makes -------------------------------------------

OPERATOR_RULES = {
    ("herald.dev", "realtimegateways"): {"list", "watch"},
    ("herald.dev", "realtimegateways/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "patch"},
    ("", "services"): {"get", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "patch"},
    ("", "pods"): {"list"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}


def rule_table(role):
    """(group, resource) -> verbs, failing on anything a table can't express exactly."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for verb in rule["verbs"]:
            assert verb != "*", rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource), rule
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def rbac(values):
    objects = render(values)
    roles = of_kind(objects, "Role") + of_kind(objects, "ClusterRole")
    bindings = of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding")
    return roles, bindings


@pytest.mark.parametrize(
    "values,watch",
    [
        pytest.param(required_values(), None, id="cluster-wide"),
        pytest.param(load_values(CHART / "ci" / "watch-namespace-values.yaml"), "realtime", id="one-namespace"),
    ],
)
def test_rbac_is_exactly_what_the_operator_calls(values, watch):
    roles, bindings = rbac(values)
    assert len(roles) == 2 and len(bindings) == 2
    tables = {(r["kind"], r["metadata"].get("namespace")): rule_table(r) for r in roles}
    main_kind = "Role" if watch else "ClusterRole"
    assert tables == {
        (main_kind, watch): OPERATOR_RULES,
        ("Role", NAMESPACE): LEASE_RULES,
    }
    sa = f"{RELEASE}-operator"
    for role in roles:
        (binding,) = [
            b
            for b in bindings
            if b["roleRef"]["name"] == role["metadata"]["name"]
            and b["metadata"].get("namespace") == role["metadata"].get("namespace")
        ]
        assert binding["kind"] == role["kind"] + "Binding"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role["kind"],
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert one(render(values), "ServiceAccount")["metadata"]["name"] == sa


def test_rbac_test_can_fail():
    """A role with one verb too many, or one missing, is caught."""
    roles, _ = rbac(required_values())
    cluster_role = next(r for r in roles if r["kind"] == "ClusterRole")
    widened = copy.deepcopy(cluster_role)
    widened["rules"][0]["verbs"].append("get")
    assert rule_table(widened) != OPERATOR_RULES
    narrowed = copy.deepcopy(cluster_role)
    narrowed["rules"][2]["verbs"].remove("patch")
    assert rule_table(narrowed) != OPERATOR_RULES
    wildcard = copy.deepcopy(cluster_role)
    wildcard["rules"][0]["verbs"] = ["*"]
    with pytest.raises(AssertionError):
        rule_table(wildcard)


def test_rbac_can_be_left_out():
    values = required_values()
    values["operator"] = {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}}
    roles, bindings = rbac(values)
    assert roles == [] and bindings == []
    assert of_kind(render(values), "ServiceAccount") == []
    pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mine"


# ---- the operator Deployment ----------------------------------------------------------------


def operator_pod(values):
    return one(render(values), "Deployment")["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", value_set_params())
def test_operator_pod_is_hardened(values):
    pod = operator_pod(values)
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc or sc["privileged"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_operator_is_wired_to_its_flags():
    pod = operator_pod(required_values())
    (c,) = pod["containers"]
    assert c["command"] == ["herald-operator"] and c["args"] == ["run"]
    env = env_of(c)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HERALD_OPERATOR_LEASE_NAMESPACE"] == NAMESPACE
    assert env["HERALD_OPERATOR_LEASE_NAME"] == f"{RELEASE}-operator"
    assert env["HERALD_OPERATOR_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert env["HERALD_OPERATOR_INTERVAL_SECS"] == "15"
    assert env["HERALD_OPERATOR_LOG_FORMAT"] == "text"
    assert "HERALD_OPERATOR_NAMESPACE" not in env
    assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    dep = one(render(required_values()), "Deployment")
    assert dep["spec"]["replicas"] == 1


def test_operator_watch_namespace():
    values = load_values(CHART / "ci" / "watch-namespace-values.yaml")
    objects = render(values)
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["HERALD_OPERATOR_NAMESPACE"] == "realtime"
    assert env["HERALD_OPERATOR_LEASE_NAMESPACE"] == NAMESPACE
    assert env["HERALD_OPERATOR_LEASE_NAME"] == "herald-leader"
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    # What the operator must see lives in the namespace it watches.
    for kind in ("RealtimeGateway", "Secret", "Pod"):
        assert one(objects, kind)["metadata"]["namespace"] == "realtime", kind


def test_metrics_service_selects_only_the_operator():
    objects = render(required_values())
    svc = one(objects, "Service")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] != "herald-gateway"


# ---- keys -----------------------------------------------------------------------------------


def decoded(secret):
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_chart_secret_holds_the_keys():
    values = load_values(CHART / "ci" / "watch-namespace-values.yaml")
    objects = render(values)
    data = decoded(one(objects, "Secret"))
    assert data == {
        "jwt-secret": "ci-jwt-secret-0123456789abcdef0123456789",
        "publish-keys": "backend:ci-publish-key-0123456789abcdef\nselftest:ci-selftest-key-0123456789abcdef\n",
        "test-publish-key": "ci-selftest-key-0123456789abcdef",
    }
    auth = one(objects, "RealtimeGateway")["spec"]["auth"]
    assert auth == {
        "jwtSecret": {"name": f"{RELEASE}-auth", "key": "jwt-secret"},
        "publishKeys": {"name": f"{RELEASE}-auth", "key": "publish-keys"},
    }


def test_existing_secret_is_referenced_not_created():
    values = load_values(CHART / "ci" / "existing-secret-values.yaml")
    objects = render(values)
    assert of_kind(objects, "Secret") == []
    spec = one(objects, "RealtimeGateway")["spec"]
    assert spec["auth"] == {
        "jwtSecret": {"name": "herald-keys", "key": "jwt-secret"},
        "jwks": {"name": "herald-keys", "key": "jwks.json"},
        "publishKeys": {"name": "herald-keys", "key": "publish-keys"},
    }
    assert spec["nats"]["credentialsSecret"] == {"name": "herald-nats-creds", "key": "herald.creds"}
    # A NATS cluster: every node's URL reaches the gateways, the history in three replicas.
    assert spec["nats"]["url"] == "nats://nats-0.nats.nats.svc:4222,nats://nats-1.nats.nats.svc:4222"
    assert spec["gateway"]["historyReplicas"] == 3
    volume = one(objects, "Pod")["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == "herald-keys"


def render_error(values):
    from helm_python import HelmError

    with pytest.raises(HelmError) as e:
        render(values)
    return str(e.value)


def test_render_fails_clearly_without_required_values():
    assert "nats.url is required" in render_error({})
    message = render_error({"nats": {"url": "nats://nats:4222"}})
    assert "auth.existingSecret" in message and "auth.jwtSecret" in message
    values = required_values()
    values["auth"]["publishKeys"] = []
    assert "helm test needs" in render_error(values)
    values["tests"] = {"enabled": False}
    render(values)  # without the test, publisher keys are optional


def test_render_fails_on_inconsistent_values():
    values = required_values()
    values["gateway"] = {"replicas": {"min": 5, "max": 2}}
    assert "replicas.max (2) must be at least gateway.replicas.min (5)" in render_error(values)
    values = required_values()
    values["gateway"] = {"targetConnectionsPerPod": 100, "maxConnectionsPerPod": 50}
    assert "maxConnectionsPerPod" in render_error(values)
    values = required_values()
    values["auth"]["jwtSecret"] = "too-short"
    assert "at least 16 characters" in render_error(values)
    values = required_values()
    values["tests"] = {"publishKey": "nope"}
    assert '"nope" names no entry' in render_error(values)
    values = required_values()
    values["auth"]["publishKeys"].append(dict(values["auth"]["publishKeys"][0]))
    assert "twice" in render_error(values)
    values = required_values()
    values["gateway"] = {"name": f"{RELEASE}-operator"}
    assert "is taken by the operator" in render_error(values)
    values = required_values()
    values["auth"] = {"existingSecret": "mine", "existingSecretKeys": {"jwtSecret": "", "jwks": ""}}
    assert "client tokens" in render_error(values)


def test_operator_only_install():
    objects = render({"gateway": {"enabled": False}})
    kinds = {o["kind"] for o in objects}
    assert "RealtimeGateway" not in kinds and "Secret" not in kinds and "Pod" not in kinds
    assert "Deployment" in kinds


# ---- helm test --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", value_set_params())
def test_helm_test_pod_does_a_round_trip(values):
    objects = render(values)
    pods = of_kind(objects, "Pod")
    if values.get("tests", {}).get("enabled") is False:
        assert pods == []
        return
    (pod,) = pods
    rtgw = one(objects, "RealtimeGateway")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["namespace"] == rtgw["metadata"]["namespace"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["image"] == rtgw["spec"]["image"]
    assert "command" not in c  # the image's entrypoint, herald-gateway
    args = c["args"]
    assert args[0] == "selftest"
    opts = dict(zip(args[1::2], args[2::2]))
    assert opts["--url"] == f"http://{rtgw['metadata']['name']}:80"
    (mount,) = c["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    files = {f"{mount['mountPath']}/{i['path']}": i["key"] for i in volume["secret"]["items"]}
    jwt_key = files[opts["--jwt-secret-file"]]
    test_key = files[opts["--publish-key-file"]]
    assert jwt_key == rtgw["spec"]["auth"]["jwtSecret"]["key"]
    secrets = of_kind(objects, "Secret")
    if secrets:  # chart-created: the test key is one of the gateways' publisher keys
        data = decoded(secrets[0])
        assert volume["secret"]["secretName"] == secrets[0]["metadata"]["name"]
        published = dict(line.split(":", 1) for line in data["publish-keys"].splitlines())
        assert data[test_key] in published.values()
        assert data[jwt_key] == values["auth"]["jwtSecret"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False


# ---- optional objects -------------------------------------------------------------------------


def test_service_monitors_and_network_policy_are_off_by_default():
    kinds = {o["kind"] for o in render(required_values())}
    assert "ServiceMonitor" not in kinds and "NetworkPolicy" not in kinds


def test_service_monitors_scrape_operator_and_gateways():
    values = load_values(CHART / "ci" / "monitoring-values.yaml")
    objects = render(values)
    monitors = {m["metadata"]["name"]: m for m in of_kind(objects, "ServiceMonitor")}
    op = monitors[f"{RELEASE}-operator"]
    gw = monitors[f"{RELEASE}-gateway"]
    assert op["spec"]["endpoints"][0]["port"] == "metrics"
    assert op["spec"]["selector"]["matchLabels"].items() <= one(objects, "Service")["metadata"]["labels"].items()
    assert gw["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    # The labels the operator puts on the gateway Service (operator/src/resources.rs).
    assert gw["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "herald-gateway",
        "app.kubernetes.io/instance": RELEASE,
    }
    for m in monitors.values():
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_network_policy_allows_http_in_and_nats_and_dns_out():
    values = load_values(CHART / "ci" / "monitoring-values.yaml")
    np = one(render(values), "NetworkPolicy")["spec"]
    assert np["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "herald-gateway", "app.kubernetes.io/instance": RELEASE}
    assert np["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = np["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert len(ingress["from"]) == 5
    operator_labels = one(render(values), "Deployment")["spec"]["template"]["metadata"]["labels"]
    operator_peer = ingress["from"][3]
    assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert operator_peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
    test_labels = one(render(values), "Pod")["metadata"]["labels"]
    assert ingress["from"][4]["podSelector"]["matchLabels"].items() <= test_labels.items()
    nats, dns = np["egress"]
    assert nats["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert nats["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_network_policy_lets_the_gateways_fetch_their_keys():
    # A gateway is not ready until it has fetched every JWKS URL once: with only NATS and DNS
    # allowed out, none ever was (before).
    values = load_values(CHART / "ci" / "monitoring-values.yaml")
    values["auth"]["jwksUrls"] = ["https://id.example/jwks", "https://keys.example:8443/k", "https://id2.example/j"]
    collector = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "otel"}}}],
                 "ports": [{"port": 4317, "protocol": "TCP"}]}
    values["networkPolicy"]["extraEgress"] = [collector]
    np = one(render(values), "NetworkPolicy")["spec"]
    nats, dns, keys, extra = np["egress"]
    assert keys == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}]}
    assert extra == collector


# ---- NOTES.txt --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", value_set_params())
def test_notes_give_copy_paste_commands(values):
    text = notes(values)
    rtgw = one(render(copy.deepcopy(values)), "RealtimeGateway")
    name, ns = rtgw["metadata"]["name"], rtgw["metadata"]["namespace"]
    assert f"kubectl -n {ns} get rtgw {name}" in text
    assert f"kubectl -n {ns} port-forward service/{name} 8080:80" in text
    assert "=== Operator ===" in text and "=== Upgrades ===" in text
    assert "{{" not in text and "<no value>" not in text
    if "publishKeys" in rtgw["spec"]["auth"]:
        assert "/v1/publish" in text
        # The dashboard takes its own key: the notes never put the publisher key in its URL.
        assert "dashboard?key=$KEY" not in text
        if "dashboardKeys" in rtgw["spec"]["auth"]:
            assert "dashboard?key=$DASHBOARD_KEY" in text
    if "jwtSecret" in rtgw["spec"]["auth"]:
        assert "curl -N" in text and "/events?channels=" in text
    if values.get("tests", {}).get("enabled", True):
        assert f"helm test {RELEASE} -n {NAMESPACE} --logs" in text
        assert "herald-gateway selftest --url http://127.0.0.1:8080" in text


def test_value_sets_cover_the_ci_files():
    assert {"defaults+set", "default-values", "existing-secret-values", "watch-namespace-values",
            "monitoring-values", "custom-resources-values"} <= set(VALUE_SETS)


# ---- the image the chart runs ---------------------------------------------------------------


def test_dockerfile_builds_what_the_chart_runs():
    from conftest import REPO

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--release --locked" in dockerfile
    for binary in ("herald-gateway", "herald-operator", "herald-loadtest"):
        assert f"--bin {binary}" in dockerfile
    assert 'ENTRYPOINT ["herald-gateway"]' in dockerfile  # the gateway and test pods rely on it
    assert "\nUSER 65532:65532\n" in dockerfile
    pod = operator_pod(required_values())
    assert pod["securityContext"]["runAsUser"] == 65532
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"target", ".venv", ".git"} <= set(ignored)
    assert "clients" not in ignored  # the gateway embeds clients/js/src


def test_an_identity_providers_jwks_url_reaches_the_gateways():
    objects = render(load_values(CHART / "ci" / "jwks-url-values.yaml"))
    auth = one(objects, "RealtimeGateway")["spec"]["auth"]
    assert auth == {
        "jwksUrls": ["https://example.eu.auth0.com/.well-known/jwks.json"],
        "jwksRefreshSecs": 120,
        "issuer": "https://example.eu.auth0.com/",
        "audience": "herald",
    }
    # Keys in the clear are refused at render, as the gateways would refuse them at start
    # (before: a release whose pods never started), unless allowed or on this machine.
    values = load_values(CHART / "ci" / "jwks-url-values.yaml")
    values["auth"]["jwksUrls"] = ["http://keycloak.auth.svc/jwks"]
    assert "is plain http" in render_error(values)
    values["auth"]["jwksAllowHttp"] = True
    assert one(render(copy.deepcopy(values)), "RealtimeGateway")["spec"]["auth"]["jwksAllowHttp"] is True
    values["auth"]["jwksAllowHttp"] = False
    values["auth"]["jwksUrls"] = ["http://127.0.0.1:8080/jwks"]
    render(values)


def test_dashboard_keys_are_their_own():
    values = required_values()
    values["auth"]["dashboardKeys"] = [{"name": "ops", "secret": "ci-dashboard-key-0123456789abcdef"}]
    objects = render(values)
    assert decoded(one(objects, "Secret"))["dashboard-keys"] == "ops:ci-dashboard-key-0123456789abcdef\n"
    text = notes(copy.deepcopy(values))
    assert "dashboard?key=$DASHBOARD_KEY" in text and "get secret" in text, text
    auth = one(objects, "RealtimeGateway")["spec"]["auth"]
    assert auth["dashboardKeys"] == {"name": f"{RELEASE}-auth", "key": "dashboard-keys"}
    # Without any, the dashboard is off: no key in the Secret, none in the resource.
    plain = render(required_values())
    assert "dashboard-keys" not in decoded(one(plain, "Secret"))
    assert "dashboardKeys" not in one(plain, "RealtimeGateway")["spec"]["auth"]
    # A publisher key's secret is refused as a dashboard key.
    values["auth"]["dashboardKeys"] = [{"name": "ops", "secret": values["auth"]["publishKeys"][0]["secret"]}]
    assert "has the secret of publisher key" in render_error(values)
