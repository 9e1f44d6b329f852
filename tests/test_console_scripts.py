"""The installed console scripts are the recipes: ``--help`` works, bad input is one line, and a run works
outside a checkout (the configs ship inside the package)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES

SCRIPTS = ("sapg-train", "sapg-study", "sapg-evaluate", "sapg-export", "sapg-report")


def script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e .)")
    return found


def run(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_help(tmp_path):
    """Every script's ``--help`` (started together: each is mostly start-up)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    processes = {
        name: subprocess.Popen([script(name), "--help"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        for name in SCRIPTS
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (name, stderr)
        assert stdout.strip(), name


def test_bad_value_is_one_line(tmp_path):
    result = run([script("sapg-train"), "ppo.lr=abc"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: ppo.lr='abc' is not accepted: a number > 0"
    assert not any(tmp_path.iterdir())  # refused before Hydra made a folder


def test_trains_outside_a_checkout(tmp_path):
    result = run([script("sapg-train"), *TINY_OVERRIDES, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "config.yaml").exists()
