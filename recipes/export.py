"""Export a trained run's policy to ONNX or TorchScript (``sapg-export`` once installed).

Runs from a checkout without installing; the job, its options and examples: :mod:`sapg_torchrl.cli.export`
(``python recipes/export.py --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from sapg_torchrl.cli.export import main  # noqa: E402

if __name__ == "__main__":
    main()
