"""deploy/: the Dockerfile, docker-compose.yml, Kubernetes manifests and Grafana files, checked
without a Docker engine: they parse, every service runs an existing CLI command, every TRACKFLOW_*
variable is a known setting, the ports agree, and every Grafana panel's SQL runs on the current DDL.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

#: every command a deployed service runs; by the end of issue 6 all of them exist
EXPECTED_COMMANDS = {("collector",), ("worker",), ("sink",), ("dashboard",), ("fx", "run"), ("db", "migrate")}
#: settings modules of the components (imported too, in case their CLI is not registered yet)
SETTINGS_MODULES = ("collector.settings", "pipeline.settings", "sinks.settings", "trackflow.simulate_cli")
TRACKFLOW_SERVICES = {"migrate", "collector", "worker", "sink", "dashboard", "fx", "admin"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for res in kust["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / res).read_text()) if d)
    return docs


@pytest.fixture(scope="module")
def cli_group() -> click.Group:
    from trackflow import cli

    cli._load_commands()
    return cli.cli


@pytest.fixture(scope="module")
def known_env(cli_group: click.Group) -> set[str]:
    from trackflow.config import SETTINGS_CLASSES

    for mod in SETTINGS_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    names: set[str] = set()
    for cls in SETTINGS_CLASSES.values():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for fname, f in cls.model_fields.items():
            names.add((prefix + fname).upper())
            if isinstance(f.validation_alias, str):
                names.add(f.validation_alias.upper())
    return names


def _resolve(group: click.Group, argv: list[str]) -> click.Command | None:
    cmd: click.Command = group
    for word in argv:
        if word.startswith("-"):
            break
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.commands.get(word)
        if sub is None:
            return None
        cmd = sub
    return cmd


def _deployments(k8s: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s if d["kind"] in ("Deployment", "Job")}


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _service_commands(compose: dict[str, Any], k8s: list[dict[str, Any]]) -> dict[str, list[str]]:
    out = {f"compose:{n}": s["command"] for n, s in compose["services"].items() if n in TRACKFLOW_SERVICES}
    out.update({f"k8s:{n}": _container(d)["args"] for n, d in _deployments(k8s).items()})
    return out


# -- files parse ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M)
    assert len(stages) >= 3 and stages[-1] == "runtime"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["trackflow"]' in text
    assert "npm ci" in text  # the charting library comes from npm, not a CDN
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "node_modules" in ignore


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (
        "kafka",
        "schema-registry",
        "clickhouse",
        "redis",
        "collector",
        "worker",
        "sink",
        "dashboard",
        "grafana",
        "collector-lb",
        "migrate",
    ):
        assert name in services, name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["collector"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in TRACKFLOW_SERVICES:
        assert services[name]["image"].startswith("${TRACKFLOW_IMAGE")
    assert services["sink"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_k8s_manifests(k8s: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s}
    for kind, name in [
        ("Deployment", "trackflow-collector"),
        ("Service", "trackflow-collector"),
        ("HorizontalPodAutoscaler", "trackflow-collector"),
        ("Deployment", "trackflow-worker"),
        ("Deployment", "trackflow-sink"),
        ("Deployment", "trackflow-dashboard"),
        ("ConfigMap", "trackflow-config"),
        ("Secret", "trackflow-secrets"),
    ]:
        assert (kind, name) in kinds, (kind, name)
    hpa = next(d for d in k8s if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "trackflow-collector",
    }
    c = _container(_deployments(k8s)["trackflow-collector"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name, d in _deployments(k8s).items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        refs = {next(iter(e.values()))["name"] for e in _container(d)["envFrom"]}
        assert refs == {"trackflow-config", "trackflow-secrets"}, name
        if d["kind"] == "Deployment":
            sel = d["spec"]["selector"]["matchLabels"]
            assert all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())


# -- commands ---------------------------------------------------------------------------------


def test_every_service_command_that_exists_is_a_cli_command(compose, k8s, cli_group) -> None:
    used = _service_commands(compose, k8s)
    assert {tuple(w for w in argv if not w.startswith("-")) for argv in used.values()} - {
        ("--help",)
    } <= EXPECTED_COMMANDS | {()}
    missing = sorted(" ".join(c) for c in EXPECTED_COMMANDS if _resolve(cli_group, list(c)) is None)
    for where, argv in used.items():
        if " ".join(argv) in missing:
            continue
        assert _resolve(cli_group, argv) is not None, (where, argv)


def test_every_expected_service_command_exists(cli_group) -> None:
    missing = sorted(" ".join(c) for c in EXPECTED_COMMANDS if _resolve(cli_group, list(c)) is None)
    if missing:
        pytest.skip(f"not in the CLI yet (being built by other components): {missing}")
    assert not missing


# -- environment ------------------------------------------------------------------------------


def _compose_env(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: dict(s.get("environment") or {}) for n, s in compose["services"].items() if n in TRACKFLOW_SERVICES
    }


def _k8s_env(k8s: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in k8s:
        if d["kind"] == "ConfigMap":
            out[d["metadata"]["name"]] = dict(d["data"])
        elif d["kind"] == "Secret" and d["metadata"]["name"] == "trackflow-secrets":
            out[d["metadata"]["name"]] = dict(d["stringData"])
        elif d["kind"] in ("Deployment", "Job"):
            out[d["metadata"]["name"]] = {e["name"]: e.get("value") for e in _container(d).get("env", [])}
    return out


def test_every_trackflow_variable_is_a_known_setting(compose, k8s, known_env) -> None:
    assert "TRACKFLOW_KAFKA_BOOTSTRAP" in known_env and "TRACKFLOW_COLLECTOR_PORT" in known_env
    for where, env in {**_compose_env(compose), **_k8s_env(k8s)}.items():
        for var in env:
            if var.startswith("TRACKFLOW_"):
                assert var in known_env, f"{where}: {var} is not a setting of any component"
    for var in (
        "TRACKFLOW_KAFKA_BOOTSTRAP",
        "TRACKFLOW_REDIS_URL",
        "TRACKFLOW_CLICKHOUSE_URL",
        "TRACKFLOW_SCHEMA_REGISTRY_URL",
        "TRACKFLOW_TOPIC_PREFIX",
        "TRACKFLOW_HOME",
    ):
        assert var in _compose_env(compose)["collector"], var
        assert var in {**_k8s_env(k8s)["trackflow-config"], **_k8s_env(k8s)["trackflow-secrets"]}, var
    assert "TRACKFLOW_READ_KEY" in _compose_env(compose)["dashboard"]
    assert "TRACKFLOW_READ_KEY" in _k8s_env(k8s)["trackflow-secrets"]


# -- ports ------------------------------------------------------------------------------------


def test_ports_match_the_settings(compose, k8s, known_env) -> None:
    from collector.settings import CollectorSettings

    collector_port = CollectorSettings.model_fields["port"].default
    assert collector_port == 8080
    try:
        from sinks.settings import SinkSettings
    except ImportError:
        read_port = 8081
    else:
        read_port = SinkSettings.model_fields["read_api_port"].default
    assert read_port == 8081

    s = compose["services"]
    assert int(s["collector"]["environment"]["TRACKFLOW_COLLECTOR_PORT"]) == collector_port
    assert s["collector"]["expose"] == [str(collector_port)]
    assert s["collector-lb"]["ports"] == [f"${{COLLECTOR_PORT:-8080}}:{collector_port}"]
    nginx = (DEPLOY / "nginx" / "collector.conf").read_text()
    assert f"listen {collector_port};" in nginx and f"http://collector:{collector_port}" in nginx
    for name in ("sink", "dashboard"):
        assert int(s[name]["environment"]["TRACKFLOW_READ_API_PORT"]) == read_port
    assert s["dashboard"]["ports"] == [f"${{DASHBOARD_PORT:-8081}}:{read_port}"]
    assert str(collector_port) in str(s["collector"]["healthcheck"]["test"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ports = {j["job_name"]: j["dns_sd_configs"][0]["port"] for j in prom["scrape_configs"]}
    assert ports == {
        "collector": collector_port,
        "worker": int(s["worker"]["environment"]["TRACKFLOW_PIPELINE_METRICS_PORT"]),
        "sink": read_port,
    }

    deps = _deployments(k8s)
    env = _k8s_env(k8s)
    for dep, port, var in (
        ("trackflow-collector", collector_port, "TRACKFLOW_COLLECTOR_PORT"),
        ("trackflow-sink", read_port, "TRACKFLOW_READ_API_PORT"),
        ("trackflow-dashboard", read_port, "TRACKFLOW_READ_API_PORT"),
        ("trackflow-worker", 9102, "TRACKFLOW_PIPELINE_METRICS_PORT"),
    ):
        c = _container(deps[dep])
        assert [p["containerPort"] for p in c["ports"]] == [port], dep
        assert int(env[dep][var]) == port, dep
        named = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                handler = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert handler["port"] in named | {port}, (dep, probe)
    for svc in (d for d in k8s if d["kind"] == "Service"):
        dep = deps[svc["metadata"]["name"]]
        named = {p["name"]: p["containerPort"] for p in _container(dep)["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named and named[p["targetPort"]] == p["port"]
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


# -- Grafana ----------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "trackflow.json").read_text())


def test_grafana_is_provisioned() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "clickhouse.yml").read_text())
    source = ds["datasources"][0]
    assert source["type"] == "grafana-clickhouse-datasource"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "trackflow.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = _dashboard()
    assert len(dash["panels"]) >= 10
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == source["uid"]
        assert "metrics." in p["title"]  # names the function in sinks/metrics.py it mirrors


_RUN_PANELS = r"""
import json, sys
from datetime import date, timedelta
import clickhouse_connect
from sinks.migrate import migrate
path, sqls = sys.argv[1], json.loads(sys.stdin.read())
client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
migrate(client, database="tf_grafana")
client = clickhouse_connect.get_client(dsn=f"chdb://{path}", database="tf_grafana")
out = []
for sql in sqls:
    try:
        client.query(sql)
        out.append(None)
    except Exception as exc:
        out.append(str(exc)[:500])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_grafana_panel_runs_on_the_current_ddl(tmp_path: Path) -> None:
    """The coupling with sinks/metrics.py: the panels' SQL must run against the schema the sink creates."""
    pytest.importorskip("sinks.migrate")
    dash = _dashboard()
    variables = {v["name"]: v.get("query", "") for v in dash["templating"]["list"] if v["type"] == "textbox"}
    sqls = []
    for p in dash["panels"]:
        sql = p["targets"][0]["rawSql"]
        sql = sql.replace("$__fromTime", "toDateTime('2026-09-01 00:00:00')")
        sql = sql.replace("$__toTime", "toDateTime('2026-09-30 00:00:00')").replace("${app}", "demo")
        for name, value in variables.items():
            sql = sql.replace("${" + name + "}", value)
        assert "$" not in sql, sql
        sqls.append(sql)
    res = subprocess.run(
        [sys.executable, "-c", _RUN_PANELS, str(tmp_path / "chdb")],
        input=json.dumps(sqls),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    failures = {p["title"]: e for p, e in zip(dash["panels"], errors, strict=True) if e}
    assert not failures, failures
