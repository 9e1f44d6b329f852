"""The package's layers point one way (cli -> app -> training -> the method; the analysis never imports training), and
no module imports itself back through others: the contracts of ``[tool.importlinter]`` in pyproject.toml, checked by
import-linter, and a cycle check on grimp's import graph (which import-linter is built on)."""

import shutil
import subprocess

import grimp
from conftest import REPO


def test_the_layer_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint is not None, "import-linter is part of the [test] extra"
    done = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_import_cycle():
    graph = grimp.build_graph("sapg_torchrl")
    cycles = [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported != importer
        and not importer.startswith(imported + ".")  # a module importing its own package's __init__ is no cycle
        and not imported.startswith(importer + ".")  # nor a package importing its submodules
        and graph.chain_exists(importer=imported, imported=importer)
    ]
    assert not cycles, f"modules that import each other through a chain: {cycles}"
