"""Settings: names, aliases, bounds, .env precedence and the CPU count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cross_pictures.config import (
    Precision,
    Settings,
    available_cpus,
    describe_validation_error,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["TOP_K", "TOP_k", "top_k"])
def test_top_k_accepts_every_spelling(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "7")
    assert Settings(_env_file=None).top_k == 7


def test_environment_wins_over_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9001\nTOP_K=4\n")
    monkeypatch.setenv("PORT", "9002")
    settings = Settings(_env_file=env_file)
    assert (settings.port, settings.top_k) == (9002, 4)


def test_int8_is_served_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRECISION", "MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.precision is Precision.INT8
    assert settings.active_model_path == settings.int8_model_path


def test_a_model_path_alone_means_serve_that_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PRECISION", raising=False)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "zoo.onnx"))
    assert Settings(_env_file=None).active_model_path == tmp_path / "zoo.onnx"
    # Unless PRECISION says otherwise, explicitly.
    monkeypatch.setenv("PRECISION", "int8")
    assert Settings(_env_file=None).precision is Precision.INT8


@pytest.mark.parametrize(
    ("name", "value"),
    [("TOP_K", "0"), ("PORT", "70000"), ("PRECISION", "fp16"), ("MAX_UPLOAD_BYTES", "lots")],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = describe_validation_error(caught.value)
    assert f"{name}={value!r}" in message
    assert "\n" not in message


def test_threads_default_to_usable_cpus_split_between_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKERS", "2")
    settings = Settings(_env_file=None)
    assert settings.threads == max(1, available_cpus() // 2)


def test_cgroup_v2_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")


def test_cgroup_v1_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} == listed
