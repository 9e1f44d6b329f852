"""Write a study's report: tables, findings and plots (``sapg-report`` once installed).

Runs from a checkout without installing; the job, its options and examples: :mod:`sapg_torchrl.cli.report`
(``python recipes/report.py --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from sapg_torchrl.cli.report import main  # noqa: E402

if __name__ == "__main__":
    main()
