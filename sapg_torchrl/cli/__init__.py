"""The command-line jobs: ``sapg-train``, ``sapg-study``, ``sapg-evaluate``, ``sapg-export`` and ``sapg-report`` (console scripts of
the installed package; ``recipes/*.py`` run the same from a checkout).

Their Hydra configs are the package's ``configs/`` folder (:data:`CONFIG_DIR`) on top of the schema of
:mod:`sapg_torchrl.app.schema`; ``--config-dir <folder>`` adds a folder of your own (e.g. ``ablation/mine.yaml``).
Importing this package registers the schemas and the ``${sapg_env_preset:}`` resolver.
"""

from pathlib import Path

from sapg_torchrl.cli.checks import register_resolvers
from sapg_torchrl.app.schema import register_schemas

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The recipes' Hydra configs: ``sapg.yaml``, ``study.yaml``, ``evaluate.yaml``, ``export.yaml`` and the groups ``env``,
``fidelity``, ``ablation``."""

register_schemas()
register_resolvers()
