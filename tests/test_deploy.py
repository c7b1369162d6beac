"""The Dockerfile and deploy/ manifests agree with the app's routes, its settings and the Makefile.

No container engine or cluster runs here, so the files are parsed and cross-checked: probes point
at routes that answer, env names are settings and their values validate, ports and CPU figures
match, and the image is built by the same `make` targets a developer runs.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import AliasChoices
from starlette.routing import Match
from starlette.types import Scope

from cross_pictures.app import create_app
from cross_pictures.cli import UVICORN_GRACE_S
from cross_pictures.config import Settings
from tests.fakes import FakeClassifier

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"

Manifest = dict[str, Any]

# Image ENV that configures Python or the shell, not the service.
NON_SETTINGS_ENV = re.compile(r"^(PATH|PYTHON\w*)$")


# --- Kubernetes ---------------------------------------------------------------------------------


def manifests() -> list[tuple[Path, Manifest]]:
    """Every document of every YAML file in deploy/, with its file."""
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path.name}: not a mapping"
                documents.append((path, document))
    return documents


def resource(kind: str) -> Manifest:
    """The one Kubernetes object of this kind."""
    found = [doc for _, doc in manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def pod_spec() -> Manifest:
    spec: Manifest = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> Manifest:
    containers: list[Manifest] = pod_spec()["containers"]
    assert len(containers) == 1, "one container per pod: the CPU figures assume it"
    return containers[0]


def container_env() -> dict[str, str]:
    env: list[Manifest] = container().get("env", [])
    for item in env:
        assert "value" in item, f"{item['name']}: use a literal value so it can be checked here"
        assert isinstance(item["value"], str), f"{item['name']}: quote the value, env is text"
    return {item["name"]: item["value"] for item in env}


def http_port() -> Manifest:
    ports: list[Manifest] = container()["ports"]
    (port,) = (p for p in ports if p.get("name") == "http")
    return port


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "1500m", "0.5") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("1Gi", "512Mi", "1000000") in bytes."""
    for suffix, factor in BINARY_SUFFIXES.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def setting_names() -> set[str]:
    """Every name Settings reads from the environment, lower-cased (it is case-insensitive)."""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(name.lower())
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.lower())
        elif isinstance(alias, AliasChoices):
            names.update(str(choice).lower() for choice in alias.choices)
    return names


def container_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container sees them: image ENV, overridden by the Deployment's env."""
    for name in setting_names():
        monkeypatch.delenv(name.upper(), raising=False)
    environment = {**image_settings_env(), **container_env()}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings, load_classifier=lambda _: FakeClassifier())


def has_get_route(app: FastAPI, path: str) -> bool:
    """Whether the app routes `GET path` somewhere (asked of the router, since included routers
    do not list their routes in `app.routes`)."""
    scope: Scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


def probes() -> dict[str, Manifest]:
    c = container()
    return {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_every_yaml_parses_and_names_its_kind() -> None:
    found = manifests()
    assert {doc["kind"] for _, doc in found} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Kustomization",
    }
    for path, doc in found:
        assert doc.get("apiVersion"), f"{path.name}: no apiVersion"
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"] == "cross-pictures", path.name


def test_kustomization_lists_every_manifest() -> None:
    listed = resource("Kustomization")["resources"]
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)


def test_probes_use_the_right_routes(app: FastAPI) -> None:
    paths = {kind: probe["httpGet"]["path"] for kind, probe in probes().items()}
    assert paths == {
        "startupProbe": "/health",
        "livenessProbe": "/health",
        "readinessProbe": "/ready",
    }
    for kind, path in paths.items():
        assert has_get_route(app, path), f"{kind}: GET {path} is not a route of the app"


def test_probed_paths_answer_200_on_a_healthy_app(client: TestClient) -> None:
    for probe in probes().values():
        path = probe["httpGet"]["path"]
        assert client.get(path).status_code == 200, path


def test_probes_target_the_http_port() -> None:
    port = http_port()
    for kind, probe in probes().items():
        assert probe["httpGet"]["port"] in (port["name"], port["containerPort"]), kind


def test_probe_timing_fits_start_up_and_draining() -> None:
    p = probes()
    startup = p["startupProbe"]
    # Model load and warm-up come before the first answer; a slow node must not be killed for it.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    readiness = p["readinessProbe"]
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) <= 10, (
        "a draining pod must leave the Service within seconds"
    )


def test_prometheus_scrapes_the_metrics_route(app: FastAPI, client: TestClient) -> None:
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == http_port()["containerPort"]
    path = annotations["prometheus.io/path"]
    assert has_get_route(app, path), f"GET {path} is not a route of the app"
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


def test_env_names_are_settings() -> None:
    unknown = {name for name in container_env() if name.lower() not in setting_names()}
    assert not unknown, f"not settings in cross_pictures/config.py: {sorted(unknown)}"


def test_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(monkeypatch)  # raises, naming the variable, if one is bad
    env = container_env()
    for name in ("NUM_THREADS", "WORKERS", "SHUTDOWN_TIMEOUT_S", "LOG_FORMAT", "PRECISION"):
        assert name in env, f"set {name} explicitly: the pod's CPU and shutdown figures rely on it"
    assert settings.host == "0.0.0.0"
    assert settings.log_format == "json"


def test_container_port_matches_expose_and_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    port = http_port()["containerPort"]
    assert port == container_settings(monkeypatch).port
    assert dockerfile_expose() == {port}


def test_service_targets_the_named_container_port() -> None:
    service = resource("Service")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == http_port()["name"]


def test_selectors_match_the_pod_labels() -> None:
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        resource("Service")["spec"]["selector"],
    ]
    selectors += [
        doc["spec"]["selector"]["matchLabels"]
        for _, doc in manifests()
        if doc["kind"] == "PodDisruptionBudget"
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()


def test_grace_period_outlasts_pre_stop_and_the_shutdown_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = container_settings(monkeypatch)
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The kubelet's clock starts before preStop; the process then needs SHUTDOWN_TIMEOUT_S to
    # drain plus uvicorn's grace for idle connections, inside the grace period.
    needed = float(pre_stop[1]) + settings.shutdown_timeout_s + UVICORN_GRACE_S
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_cpu_matches_threads_times_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(monkeypatch)
    resources = container()["resources"]
    limit = cpus(str(resources["limits"]["cpu"]))
    assert limit == settings.threads * settings.workers
    # Requests = limits: the pod gets whole CPUs for its threads, and HPA utilization is honest.
    assert cpus(str(resources["requests"]["cpu"])) == limit
    requested = memory_bytes(str(resources["requests"]["memory"]))
    assert 0 < requested <= memory_bytes(str(resources["limits"]["memory"]))


def test_pod_is_locked_down() -> None:
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, /tmp must be a volume (tempfiles, multiprocess metrics).
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_pod_runs_as_the_image_user() -> None:
    uid, _, gid = dockerfile_user().partition(":")
    security = pod_spec()["securityContext"]
    assert security["runAsUser"] == int(uid)
    if gid:
        assert security["runAsGroup"] == int(gid)


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = resource("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = resource("Deployment")
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 50 <= metric["resource"]["target"]["averageUtilization"] <= 90
    # A fixed replica count would fight the autoscaler on every apply.
    assert "replicas" not in deployment["spec"]


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    stage: int  # 0 for the first FROM's stage; -1 before any FROM


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, comments dropped and `\\` continuations joined."""
    instructions = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(keyword: str, instructions: list[Instruction]) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]  # the last one is the one in force


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on shell form."""
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError:
        parsed = None
    assert isinstance(parsed, list), f"not exec form (a JSON array): {args}"
    assert all(isinstance(part, str) for part in parsed)
    return parsed


def env_instructions(instructions: list[Instruction]) -> dict[str, str]:
    env = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                name, equals, value = pair.partition("=")
                assert equals, f"use ENV NAME=value: {instruction.args}"
                env[name] = value
    return env


def image_settings_env() -> dict[str, str]:
    env = env_instructions(final_stage())
    return {name: value for name, value in env.items() if not NON_SETTINGS_ENV.match(name)}


def dockerfile_expose() -> set[int]:
    return {
        int(port.split("/")[0])
        for i in final_stage()
        if i.keyword == "EXPOSE"
        for port in i.args.split()
    }


def dockerfile_user() -> str:
    return only("USER", final_stage()).args


def flags_and_args(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=builder a b` -> ({"from": "builder"}, ["a", "b"])."""
    flags, rest = {}, []
    for word in shlex.split(args):
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            rest.append(word)
    return flags, rest


def run_commands() -> Iterator[list[str]]:
    """Each simple command of each RUN, split into words (`&&`, `;` and `|` separate them)."""
    for instruction in dockerfile():
        if instruction.keyword != "RUN":
            continue
        _, words = flags_and_args(instruction.args)
        command: list[str] = []
        for word in words:
            if word in ("&&", "||", ";", "|"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)
        if command:
            yield command


def test_dockerfile_is_multi_stage_on_one_python() -> None:
    froms = [i.args.split() for i in dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2
    # The venv is copied between stages: its interpreter symlinks need the same Python.
    assert {f[0] for f in froms} == {"python:3.11-slim-bookworm"}


def test_venv_is_copied_to_the_path_it_was_built_at() -> None:
    instructions = dockerfile()
    builder_dirs = [i.args for i in instructions if i.keyword == "WORKDIR" and i.stage == 0]
    final_dirs = [i.args for i in final_stage() if i.keyword == "WORKDIR"]
    assert builder_dirs[-1] == final_dirs[-1] == "/app"
    copies = [flags_and_args(i.args) for i in final_stage() if i.keyword == "COPY"]
    from_builder = {tuple(paths) for flags, paths in copies if "from" in flags}
    assert ("/app/.venv", "/app/.venv") in from_builder
    assert ("/app/resources", "/app/resources") in from_builder  # both models and the labels
    assert ("/app/cross_pictures", "/app/cross_pictures") in from_builder  # the editable install


def test_final_stage_runs_as_a_non_root_user() -> None:
    user = dockerfile_user().partition(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"


def test_healthcheck_hits_health(app: FastAPI) -> None:
    healthcheck = only("HEALTHCHECK", final_stage()).args
    flags, _ = flags_and_args(healthcheck.partition("CMD")[0])
    command = exec_form(healthcheck.partition("CMD")[2].strip())
    assert "/health" in " ".join(command)
    assert has_get_route(app, "/health")
    assert "start-period" in flags, "model load and warm-up come before the first answer"


def test_cmd_is_exec_form_running_the_console_script() -> None:
    instructions = final_stage()
    entrypoints = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    for entrypoint in entrypoints:
        exec_form(entrypoint.args)
    command = exec_form(only("CMD", instructions).args)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert not entrypoints
    assert Path(command[0]).name in scripts
    assert command[0].startswith("/app/.venv/bin/")
    assert command[1:] == ["serve"]


def test_stopsignal_is_the_one_the_service_drains_on() -> None:
    assert only("STOPSIGNAL", final_stage()).args == "SIGTERM"


def test_image_env_names_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = image_settings_env()
    unknown = {name for name in env if name.lower() not in setting_names()}
    assert not unknown, f"not settings in cross_pictures/config.py: {sorted(unknown)}"
    assert {"HOST", "PORT", "LOG_FORMAT"} <= env.keys()
    assert int(env["PORT"]) in dockerfile_expose()
    container_settings(monkeypatch)  # and together with the Deployment's env they validate


# --- The image is built by make -----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    prerequisites: list[str]
    recipe: list[str]


def makefile_variables(text: str) -> dict[str, str]:
    """Simple `NAME := value` / `?=` / `=` assignments (not `$(shell ...)` ones)."""
    variables = {}
    for match in re.finditer(r"^([A-Z][A-Z0-9_]*)\s*[:?]?=\s*(.*)$", text, re.MULTILINE):
        if "$(shell" not in match[2]:
            variables[match[1]] = match[2].strip()
    return variables


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand `$(NAME)` with known variables; unknown ones stay as they are."""
    for _ in range(10):
        expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
        if expanded == text:
            return text
        text = expanded
    return text


def makefile_rules() -> dict[str, Rule]:
    text = MAKEFILE.read_text()
    variables = makefile_variables(text)
    rules: dict[str, Rule] = {}
    current: Rule | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.recipe.append(line.strip())
            continue
        match = re.match(r"^([^\s:=#][^:=]*):(?!=)(.*)$", line)
        if match is None or match[1].startswith("."):
            current = None
            continue
        targets = expand(match[1], variables).split()
        prerequisites = expand(match[2].replace("|", " "), variables).split()
        current = Rule(prerequisites, [])
        for target in targets:
            rules[target] = current
    return rules


def commands_for(target: str, rules: dict[str, Rule], seen: set[str] | None = None) -> list[str]:
    """The recipe lines `make target` runs when nothing is up to date, in order."""
    seen = set() if seen is None else seen
    if target in seen or target not in rules:
        return []
    seen.add(target)
    rule = rules[target]
    commands = []
    for prerequisite in rule.prerequisites:
        commands += commands_for(prerequisite, rules, seen)
    variables = makefile_variables(MAKEFILE.read_text())
    commands += [expand(line, variables).replace("$@", target) for line in rule.recipe]
    return commands


def make_invocations() -> list[tuple[list[str], dict[str, str]]]:
    """Each `make ...` of the Dockerfile's RUNs: its targets and its VAR=value overrides."""
    invocations = []
    for command in run_commands():
        if command[0] != "make":
            continue
        targets = [word for word in command[1:] if "=" not in word and not word.startswith("-")]
        overrides = dict(word.split("=", 1) for word in command[1:] if "=" in word)
        invocations.append((targets, overrides))
    return invocations


def make_commands() -> list[str]:
    """What the Dockerfile's `make` calls run from a clean tree, in order."""
    rules = makefile_rules()
    invocations = make_invocations()
    assert invocations, "the Dockerfile should build with `make`, like a developer does"
    commands: list[str] = []
    for targets, _ in invocations:
        assert targets, "name the make target, so the build does not hang on the default one"
        for target in targets:
            assert target in rules, f"`make {target}`: no such target in the Makefile"
            commands += commands_for(target, rules)
    return commands


def output_of(command: str, commands: list[str]) -> str:
    """The `--output` of the recipe line running `cross-pictures <command>`."""
    lines = {line for line in commands if re.search(rf"\bcross-pictures {command}\b", line)}
    assert len(lines) == 1, f"expected one `cross-pictures {command}` line among {commands}"
    words = shlex.split(lines.pop())
    return words[words.index("--output") + 1]


def test_image_is_built_by_the_make_targets_developers_run() -> None:
    commands = make_commands()
    assert any(re.search(r"\binstall --no-interaction\b", line) for line in commands), commands
    # Both models, at the paths the image's settings load them from.
    env = image_settings_env()
    workdir = [i.args for i in dockerfile() if i.keyword == "WORKDIR" and i.stage == 0][-1]
    for command, variable in (("fetch-model", "MODEL_PATH"), ("quantize", "INT8_MODEL_PATH")):
        assert f"{workdir}/{output_of(command, commands)}" == env[variable], variable


def test_make_variables_the_dockerfile_sets_are_used_by_the_makefile() -> None:
    makefile = MAKEFILE.read_text()
    for _, overrides in make_invocations():
        for name in overrides:
            assert f"$({name})" in makefile, (
                f"the Dockerfile passes {name} to make, but the Makefile never reads it, "
                "so the image would silently be built without it"
            )


def test_dockerfile_does_not_repeat_the_makefile_recipes() -> None:
    # Poetry and the model commands run through make only, so the two cannot drift apart.
    for command in run_commands():
        program = Path(command[0]).name
        assert program not in ("poetry", "cross-pictures"), " ".join(command)
        assert not (program.startswith("python") and "poetry" in command), " ".join(command)


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: `**` spans directories, `*` and `?` do not."""
    parts = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.lstrip("/")):
        parts.append(
            {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        )
    # A pattern that matches a directory excludes everything under it.
    return re.compile("".join(parts) + "(?:/.*)?")


def ignored(path: str) -> bool:
    """Whether the build context leaves `path` out (the last matching pattern wins)."""
    result = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        if pattern_regex(pattern.removeprefix("!")).fullmatch(path):
            result = not negated
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".tools/poetry/bin/poetry",
        ".git/HEAD",
        "resources/resnet50.onnx",
        "resources/resnet50.int8.onnx",
        "resources/.resnet50.onnx.x1y2.part",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        "cross_pictures/__pycache__/app.cpython-311.pyc",
        "bench/out/results.json",
        "test-output/log.txt",
        "node_modules/x/package.json",
        ".env",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path)


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    copied = [
        source
        for i in dockerfile()
        if i.keyword == "COPY"
        for flags, paths in [flags_and_args(i.args)]
        if "from" not in flags
        for source in paths[:-1]
    ]
    assert copied
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = list(path.rglob("*.py")) if path.is_dir() else [path]
        for file in [path, *files]:
            relative = file.relative_to(ROOT).as_posix()
            assert not ignored(relative), f"COPY {source}: .dockerignore excludes {relative}"
