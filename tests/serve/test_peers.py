"""`make bench-peers` without the peers: the files each one is given, the pins, the printed table."""

from __future__ import annotations

import ast
import json
from importlib.metadata import version

import pytest

from serve import peers


def test_mlserver_gets_the_lightgbm_runtime_and_a_parallel_workers_only_when_tuned(tmp_path):
    booster = tmp_path / "model.bst"
    defaults = peers.mlserver_files(tmp_path / "a", booster, 9001, 9002, 9003, None)
    tuned = peers.mlserver_files(tmp_path / "b", booster, 9011, 9012, 9013, 2)
    settings = json.loads((defaults / "settings.json").read_text())
    assert settings["http_port"] == 9001 and settings["grpc_port"] == 9002 and settings["metrics_port"] == 9003
    assert "parallel_workers" not in settings  # MLServer's own default
    assert json.loads((tuned / "settings.json").read_text())["parallel_workers"] == 2
    model = json.loads((defaults / "model-settings.json").read_text())
    assert model["implementation"] == "mlserver_lightgbm.LightGBMModel"
    assert model["parameters"]["uri"] == str(booster) and model["name"] == peers.MODEL_NAME


def test_the_v2_body_is_one_row_of_fp64_and_its_score_is_read_back():
    body = peers.v2_body([1.0, 2.5, 0.0])
    assert body == {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.5, 0.0]}]}
    assert peers.v2_score({"outputs": [{"name": "predict", "data": [0.25]}]}) == 0.25


def test_the_bentoml_service_is_python_with_one_service_class_and_one_api(tmp_path):
    source = (peers.bento_files(tmp_path) / "service.py").read_text()
    tree = ast.parse(source)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["Scorer"]
    apis = [f.name for f in classes[0].body if isinstance(f, ast.FunctionDef)
            and any("api" in ast.unparse(d) for d in f.decorator_list)]
    assert apis == ["predict"]
    assert "PEER_MODEL_FILE" in source and "PEER_WORKERS" in source


def test_every_peer_is_pinned_and_gets_this_projects_lightgbm():
    for peer in ("mlserver", "bentoml"):
        assert all("==" in pin for pin in peers.pins(peer)), peers.pins(peer)
        assert f"lightgbm=={version('lightgbm')}" in peers.pins(peer)
    assert any(p.startswith("uvloop==0.21") for p in peers.pins("mlserver"))  # 1.7.1 breaks on 0.22


def test_a_virtualenv_with_the_same_pins_is_reused_without_installing(tmp_path, monkeypatch):
    venv = tmp_path / "mlserver"
    venv.mkdir()
    (venv / "pins.txt").write_text("\n".join(peers.pins("mlserver")) + "\n")
    monkeypatch.setattr(peers.subprocess, "run", lambda *a, **k: pytest.fail(f"installed again: {a}"))
    assert peers.ensure_venv(tmp_path, "mlserver", progress=lambda _m: None) == venv


def test_the_table_puts_every_server_against_this_one():
    figures = {"this": {"rps": 8000.0, "p50_ms": 3.0, "p99_ms": 6.0, "errors": 0, "rounds": [8000.0]},
               "peer": {"rps": 800.0, "p50_ms": 30.0, "p99_ms": 90.0, "errors": 2, "rounds": [800.0]}}
    header, this, peer = peers.ratio_table(figures, "this")
    assert "req/s" in header and "vs this" in header
    assert "1.00x" in this and "8,000" in this
    assert "0.10x" in peer and " 2 " in peer
