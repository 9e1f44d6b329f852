#!/usr/bin/env python
"""TorchRL's own ``ClipPPOLoss`` tests, run against ``SAPGLoss`` (one block, no relabelled rows) and against
``ClipPPOLoss`` itself, side by side (issue 37).

    python benchmarks/conformance/torchrl_ppo_tests.py --torchrl /path/to/pytorch-rl --commit 6e18e35b2 --out /tmp/conformance

``--torchrl`` is a clone of ``pytorch/rl`` (a checkout or a bare git directory); ``--commit`` the commit whose tests
match the installed torchrl (default ``HEAD``; ``6e18e35b2``, "Bump 0.14.0", for torchrl 0.14.x). Its
``test/objectives/test_ppo.py`` (with ``_objectives_common.py`` and ``conftest.py``) is copied to a temporary folder,
never into this repository. Two runs of pytest select the same tests: those ``TestPPO`` runs with ``ClipPPOLoss``
(its parametrisations over the loss class, and the tests that build one directly). The second run imports
``SAPGLoss`` under the name ``ClipPPOLoss``. ``TestPPO`` is skipped without ``transformers``, which none of the
selected tests uses: the copy sets ``_has_transformers``. Writes ``<out>/summary.md`` (counts, and every test that
passes with one loss and not the other, with the first line of its error) and each run's JUnit XML.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

FILES = ("test_ppo.py", "_objectives_common.py", "conftest.py")
IMPORT = "from torchrl.objectives import A2CLoss, ClipPPOLoss, KLPENPPOLoss, PPOLoss"
SUBSTITUTE = "from torchrl.objectives import A2CLoss, KLPENPPOLoss, PPOLoss\nfrom sapg_torchrl import SAPGLoss as ClipPPOLoss"


def read(torchrl: Path, commit: str, name: str) -> str | None:
    """``test/objectives/<name>`` at ``commit`` of the clone, or ``None``."""
    path = f"test/objectives/{name}"
    done = subprocess.run(["git", "-C", str(torchrl), "show", f"{commit}:{path}"], capture_output=True, text=True)
    return None if done.returncode else done.stdout


def direct_users(source: str) -> set[str]:
    """Test functions that build a ClipPPOLoss in their body (not through the loss-class parametrisation)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            body = ast.Module(body=node.body, type_ignores=[])
            if any(isinstance(n, ast.Name) and n.id == "ClipPPOLoss" for n in ast.walk(body)):
                names.add(node.name)
    return names


def selected(folder: Path, source: str) -> list[str]:
    """The node ids of TestPPO (and module-level tests) that run ClipPPOLoss."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "test_ppo.py"],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    direct = direct_users(source)
    ids = []
    for line in done.stdout.splitlines():
        if "::" not in line or ("TestPPO::" not in line and line.count("::") != 1):
            continue
        name, _, params = line.split("::")[-1].partition("[")
        if "ClipPPOLoss" in params or (name in direct and "Loss" not in params):
            ids.append(line)
    return ids


def run(folder: Path, ids: list[str], xml: Path) -> dict[str, tuple[str, str]]:
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ids],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    results = {}
    for case in ET.parse(xml).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag], child.get("message", "")
        results[case.get("name")] = (outcome, message.splitlines()[0][:200] if message else "")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchrl", type=Path, required=True, help="a clone of pytorch/rl (checkout or git directory)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sources = {name: read(args.torchrl, args.commit, name) for name in FILES}
    problem = None
    if None in sources.values():
        problem = f"--torchrl {args.torchrl} at --commit {args.commit} has no test/objectives/test_ppo.py: give a clone of pytorch/rl"
    elif IMPORT not in sources["test_ppo.py"]:
        problem = f"test_ppo.py at --commit {args.commit} does not import ClipPPOLoss as this script expects: {IMPORT!r}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    sources["_objectives_common.py"] = sources["_objectives_common.py"].replace(
        '_has_transformers = bool(importlib.util.find_spec("transformers"))', "_has_transformers = True"
    )
    results, ids = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for loss in ("ClipPPOLoss", "SAPGLoss"):
            folder = Path(tmp) / loss
            folder.mkdir()
            for name, text in sources.items():
                if name == "test_ppo.py" and loss == "SAPGLoss":
                    text = text.replace(IMPORT, SUBSTITUTE)
                (folder / name).write_text(text)
            if ids is None:  # selected once, on the stock file; the same tests under SAPGLoss's name
                ids = selected(folder, sources["test_ppo.py"])
            else:
                ids = [i.replace("ClipPPOLoss]", "SAPGLoss]").replace("-ClipPPOLoss-", "-SAPGLoss-") for i in ids]
            results[loss] = {
                name.replace("SAPGLoss", "ClipPPOLoss"): value
                for name, value in run(folder, ids, args.out / f"{loss}.xml").items()
            }
    stock, ours = results["ClipPPOLoss"], results["SAPGLoss"]
    lines = [
        f"# TorchRL's ClipPPOLoss tests against SAPGLoss (pytorch/rl {args.commit})", "",
        "| loss | " + " | ".join(["passed", "failed", "error", "skipped"]) + " |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for loss, result in results.items():
        counts = Counter(outcome for outcome, _ in result.values())
        lines.append(f"| {loss} | " + " | ".join(str(counts[k]) for k in ("passed", "failed", "error", "skipped")) + " |")
    differing = sorted(name for name in stock if stock[name][0] != ours.get(name, ("missing", ""))[0])
    lines += ["", f"## {len(differing)} tests with another outcome under SAPGLoss", ""]
    by_test = Counter(name.partition("[")[0] for name in differing)
    for test, count in sorted(by_test.items()):
        example = next(name for name in differing if name.partition("[")[0] == test)
        outcome, message = ours.get(example, ("missing", ""))
        lines.append(f"- `{test}` ({count} parametrisations): {outcome}: {message}")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
