"""The GPU check (scripts/device_check.sh) cannot rot: its CPU dry run, with the tiny model, runs
every step of the real script and writes both reports. Only the sizes are smaller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from colqwen_pipeline.embedding import gpu_check

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the device check's every benchmark, in subprocesses
def test_cpu_dry_run_measures_every_row_and_writes_json_and_markdown(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", str(REPO / "scripts" / "device_check.sh"), "--model", "tiny", "--device", "cpu"]
    command += ["--out", str(out), "--work", str(work), "--pages", "4", "--batch-sizes", "1,2", "--quant-pages", "2"]
    command += ["--quant-batch", "2", "--e2e-batch", "2"]
    command += ["--invariance-pages", "4", "--invariance-batch", "4", "--e2e-docs", "2", "--e2e-pages-per-doc", "2"]
    env = os.environ | {"PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((out / "device_check.json").read_text())
    assert all(step["status"] == "ok" for step in report["steps"].values()), report["steps"]
    assert report["errors"] == []
    default = [r for r in report["rows"] if r.get("family", "colqwen2.5") == "colqwen2.5"]
    rows = {(r["kind"], r["precision"], r["batch_size"]): r for r in default}
    assert set(rows) == {("embed", "bf16", 1), ("embed", "bf16", 2), ("embed", "4bit", 2)} | {
        ("embed", "8bit", 2),
        ("e2e", "bf16", 2),
    }
    assert all(r["pages_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in report["rows"] if r["kind"] == "embed")
    assert rows[("embed", "bf16", 2)]["batch_size_used"] == 2
    e2e = rows[("e2e", "bf16", 2)]
    assert (e2e["documents"], e2e["failed"], e2e["pages"]) == (2, 0, 4), e2e

    (invariance,) = report["invariance"]
    assert invariance["visual_tokens"] == [432, 744]  # the two page sizes really were mixed
    assert invariance["grouped_equal_sizes"] == {"max_abs": 0.0, "min_cosine": 1.0}  # the engine's batching
    assert [s["step"] for s in report["skipped"]] == ["sdpa"]  # no flash-attention on a CPU, said so

    colqwen3 = [r for r in report["rows"] if r.get("family") == "colqwen3"]  # the other family, beside it
    assert [(r["precision"], r["batch_size"], r["visual_tokens"]) for r in colqwen3] == [
        ("bf16", 1, 744),
        ("bf16", 2, 744),
    ]
    assert all(r["pages_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in colqwen3)
    assert [r["family"] for r in report["build"]] == ["colqwen2.5", "colqwen3"]

    table = (out / "device_check.md").read_text()
    assert "| bench embed | 4bit | sdpa | 2 | 2 |" in table
    assert "| bench embed colqwen3 | bf16 | sdpa | 2 | 4 |" in table
    assert done.stdout.endswith(table)  # printed last: the device tool's reply keeps the end of the output
    # the device tool brings back at most 8 files: nothing else may land in --out
    assert {p.name for p in out.iterdir()} == {"device_check.json", "device_check.md", "records.jsonl"} | {
        "device_check.log"
    }


def test_a_failed_measurement_is_recorded_and_the_step_goes_on(tmp_path: Path) -> None:
    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    assert not gpu_check.guarded(tmp_path, "bf16", "bf16 batch 16", broken)
    assert gpu_check.guarded(tmp_path, "bf16", "env", lambda: {"kind": "env", "gpu": "X"})
    config = {"model": "tiny", "out": str(tmp_path), "work": str(tmp_path)}
    table = gpu_check.write_reports(tmp_path, config, {"bf16": {"status": "exit 1", "seconds": 3}})
    assert "- error in bf16 batch 16: RuntimeError: CUDA error: an illegal memory access\n" in table
    assert json.loads((tmp_path / "device_check.json").read_text())["environment"]["gpu"] == "X"


def test_steps_past_the_budget_are_reported_as_not_run(tmp_path: Path) -> None:
    config = gpu_check.parse(["--out", str(tmp_path), "--budget-s", "0", "--skip", "sdpa,e2e"])
    config["work"] = str(tmp_path)
    steps = gpu_check.run_all(config)
    assert list(steps) == ["env", "build", "bf16", "colqwen3", "4bit", "8bit"]
    assert {s["status"] for s in steps.values()} == {"not run: out of time"}
    assert "- step 8bit: not run: out of time" in (tmp_path / "device_check.md").read_text()


@pytest.mark.slow
def test_the_servers_mode_measures_one_server_against_n_on_a_cpu(tmp_path: Path) -> None:
    """`device_check.sh servers`: the path a machine with N GPUs takes, with N=2 CPU servers of the tiny model."""
    out, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", str(REPO / "scripts" / "device_check.sh"), "servers", "--model", "tiny", "--device", "cpu"]
    command += ["--servers", "2", "--pages", "8", "--request-pages", "2", "--batch", "2"]
    command += ["--out", str(out), "--work", str(work)]
    env = os.environ | {"PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "server_scaling.json").read_text())
    assert json.loads(done.stdout) == report  # printed, for the device tool's reply
    assert (report["one"]["servers"], report["many"]["servers"]) == (1, 2)
    assert report["one"]["pages_per_server"] == [8] and report["many"]["pages_per_server"] == [4, 4]
    assert report["many"]["visible_devices"] == ["", ""]  # a CPU run hides every GPU from the servers
    assert report["speedup"] == round(report["many"]["pages_per_s"] / report["one"]["pages_per_s"], 2) > 0
    assert {p.name for p in out.iterdir()} == {"server_scaling.json"}


def test_each_server_sees_its_own_gpu() -> None:
    from colqwen_pipeline.embedding.server_scaling import device_env

    config = {"device": "cuda", "gpus": 2}
    assert [device_env(config, i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
