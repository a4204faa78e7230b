"""The load-test Jobs: off by default; when enabled, a worker Job with one pod per worker and a
coordinator Job whose arguments are a complete `herald-loadtest run` command against the
gateway Service, both valid Kubernetes objects (the `ci/loadtest-values.yaml` set also runs
through the strict lint and validation of test_render.py)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from conftest import CHART, render, required_values, strip

VALUES = yaml.safe_load((CHART / "ci" / "loadtest-values.yaml").read_text())


def jobs(values):
    return {o["metadata"]["name"]: o for o in render(values) if o["kind"] == "Job"}


def test_off_by_default():
    assert jobs(required_values()) == {}


def test_enabled_renders_workers_and_a_coordinator():
    found = jobs(copy.deepcopy(VALUES))
    assert set(found) == {"herald-loadtest", "herald-loadtest-workers"}
    workers = found["herald-loadtest-workers"]
    assert workers["spec"]["parallelism"] == 4 and workers["spec"]["completions"] == 4
    w_args = workers["spec"]["template"]["spec"]["containers"][0]["args"]
    assert w_args[:2] == ["worker", "--once"]
    assert w_args[w_args.index("--nats-url") + 1] == VALUES["nats"]["url"]

    coord = found["herald-loadtest"]["spec"]["template"]["spec"]["containers"][0]
    assert coord["command"] == ["herald-loadtest"]
    args = coord["args"]
    assert args[:2] == ["run", "targeted"]
    flag = lambda f: args[args.index(f) + 1]  # noqa: E731
    assert flag("--workers") == "4"
    assert flag("--connections") == "20000"
    assert flag("--target") == "http://herald.herald-system.svc:80"
    assert flag("--publish") == "http"
    assert flag("--publish-keys-file") == "/etc/herald-loadtest/publish.keys"
    assert flag("--payload-bytes") == "256"
    volume = found["herald-loadtest"]["spec"]["template"]["spec"]["volumes"][0]
    assert {i["path"] for i in volume["secret"]["items"]} == {"jwt-secret", "publish.keys"}
    for job in found.values():
        kubernetes_validate.validate(strip(job), kubernetes_validate.latest_version(), strict=True)
        assert job["spec"]["activeDeadlineSeconds"] == 1800


def test_the_gateways_nats_credentials_reach_workers_and_coordinator():
    values = copy.deepcopy(VALUES)
    plain = jobs(copy.deepcopy(values))
    for job in plain.values():
        pod = job["spec"]["template"]["spec"]
        assert "--nats-creds" not in pod["containers"][0]["args"]
        assert [v["name"] for v in pod["volumes"]] == ["keys"]
    values["nats"]["credentialsSecret"] = {"name": "nats-user", "key": "user.creds"}
    found = jobs(values)
    assert set(found) == {"herald-loadtest", "herald-loadtest-workers"}
    for job in found.values():
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        path = args[args.index("--nats-creds") + 1]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "nats-creds")
        assert mount["readOnly"] is True
        volume = next(v for v in pod["volumes"] if v["name"] == "nats-creds")
        assert volume["secret"]["secretName"] == "nats-user"
        assert volume["secret"]["items"] == [{"key": "user.creds", "path": "nats.creds"}]
        assert path == f"{mount['mountPath']}/nats.creds"
        kubernetes_validate.validate(strip(job), kubernetes_validate.latest_version(), strict=True)


def test_without_an_hs256_secret_the_render_says_why():
    values = copy.deepcopy(VALUES)
    del values["auth"]["jwtSecret"]
    values["auth"]["jwks"] = '{"keys":[]}'
    values["tests"] = {"enabled": False}
    with pytest.raises(Exception, match="loadtest needs an HS256"):
        render(values)
