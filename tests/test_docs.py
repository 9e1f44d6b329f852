"""The Sphinx site builds without a warning: API reference, the generated config reference and the examples
gallery (its pages in the default suite, executed in the slow one)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, *options: str) -> subprocess.CompletedProcess:
    pytest.importorskip("sphinx")
    pytest.importorskip("sphinx_gallery")
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", *options, str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
    )


def test_docs_build_without_warnings(tmp_path):
    """Every page, the examples' pages included, without running the examples."""
    result = build(tmp_path, "-D", "plot_gallery=0")
    assert result.returncode == 0, result.stderr
    reference = (tmp_path / "config.html").read_text()
    assert "ppo.num_minibatches" in reference and "a number &gt; 0" in reference  # generated from the schema


@pytest.mark.slow
def test_gallery_examples_run_and_build(tmp_path):
    """The examples run (each under a minute on a CPU) and their plots are on their pages."""
    result = build(tmp_path)
    assert result.returncode == 0, result.stderr
    for name in (
        "plot_sapg_in_your_loop", "plot_from_clip_ppo_loss", "plot_new_ablation", "plot_own_env", "plot_read_study",
        "plot_deploy_leader",
    ):
        page = (tmp_path / "auto_examples" / f"{name}.html").read_text()
        assert "sphx_glr_" + name + "_001.png" in page, name
