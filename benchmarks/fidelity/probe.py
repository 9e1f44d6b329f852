#!/usr/bin/env python
"""Inside the update, minibatch by minibatch, on both sides (issue 35): how the critic and the policy move.

    python benchmarks/fidelity/probe.py ours --seed 0 --frames 6e5 --out probe/ours.csv [Hydra overrides]
    python benchmarks/fidelity/probe.py released --code /tmp/released/rl_games --seed 0 --frames 6e5 --out probe/released.csv
    python benchmarks/fidelity/probe.py show probe/released.csv probe/ours.csv [--every 2]

``ours`` runs ``ours.py``'s training (the same settings) and ``released`` the released code prepared by
``released.py prepare`` (a copy of it is patched with :data:`PROBE_EDITS` in a temporary folder; nothing of it is
kept), each writing one row per optimizer step to ``--out`` (:data:`COLUMNS`):

- ``lr``: the learning rate of the step;
- ``kl_on`` / ``kl_off``: the analytic KL of the policy before the step to the reference the schedule reads (the
  previous epoch's policy; in the first epoch the behaviour policy), over the on-policy and the relabelled rows;
- ``grad_norm``: the gradient norm before clipping;
- ``value_clip``: the share of rows whose value lies outside the clip range around the stored value (the clipped
  value loss gives them no gradient), in normalised units;
- ``signed_gap`` / ``abs_gap``: the mean of ``target - stored value`` and of its absolute value, normalised as the
  loss does;
- ``stored_std`` / ``target_std``: their spreads; ``value_mean`` / ``value_std``: the value normaliser's statistics.

``show`` (CSVs, or gzipped CSVs as committed) prints, per iteration, each file's first-minibatch gap and clipped share, the last minibatch's clipped share
and the mean learning rate: how far the critic is from its targets and how much of the value loss is live.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # released.py, ours.py and compare.py, beside this script
COLUMNS = ["step", "lr", "kl_on", "kl_off", "grad_norm", "value_clip", "signed_gap", "abs_gap", "stored_std",
           "target_std", "value_mean", "value_std"]  # fmt: skip
STEPS_PER_ITERATION = 20  # 5 epochs of 4 minibatches, the study's settings on both sides

PROBE_EDITS = {  # file under the prepared rl_games/ -> [(old, new)]
    "rl_games/algos_torch/a2c_continuous.py": [
        (
            "class A2CAgent(",
            "from rl_games.common.probe_log import probe_row\n\n\nclass A2CAgent(",
        ),
        (
            "        self.scaler.scale(loss).backward()\n",
            "        self.scaler.scale(loss).backward()\n        _lr = self.optimizer.param_groups[0]['lr']\n",
        ),
        (
            "            kl_dist = torch_ext.policy_kl(mu.detach(), sigma.detach(), old_mu_batch, old_sigma_batch, reduce_kl)\n",
            "            kl_dist = torch_ext.policy_kl(mu.detach(), sigma.detach(), old_mu_batch, old_sigma_batch, reduce_kl)\n"
            "            _kl = torch_ext.policy_kl(mu.detach(), sigma.detach(), old_mu_batch, old_sigma_batch, False).reshape(-1)\n"
            "            _off = input_dict.get('off_policy_mask', None)\n"
            "            _off = torch.zeros_like(_kl, dtype=torch.bool) if _off is None else _off.reshape(-1)\n"
            "            _gap = return_batch - value_preds_batch\n"
            "            _norm = self.value_mean_std\n"
            "            probe_row([_lr, _kl[~_off].mean(), _kl[_off].mean() if _off.any() else float('nan'),\n"
            "                       self._probe_grad_norm, ((values.detach() - value_preds_batch).abs() > curr_e_clip).float().mean(),\n"
            "                       _gap.mean(), _gap.abs().mean(), value_preds_batch.std(), return_batch.std(),\n"
            "                       _norm.running_mean, _norm.running_var.sqrt()])\n",
        ),
    ],
    "rl_games/common/a2c_common.py": [
        (
            "            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_norm)\n\n        self.scaler.step(self.optimizer)",
            "            self._probe_grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_norm)\n\n"
            "        self.scaler.step(self.optimizer)",
        ),
    ],
}
PROBE_LOG = '''"""Written by sapg-torchrl's benchmarks/fidelity/probe.py: one CSV row per optimizer step."""
import csv
import os

_state = {"writer": None, "step": 0}


def probe_row(values):
    if _state["writer"] is None:
        _state["file"] = open(os.environ["SAPG_PROBE_CSV"], "w", newline="")
        _state["writer"] = csv.writer(_state["file"])
        _state["writer"].writerow(%r)
    _state["writer"].writerow([_state["step"], *(float(v) for v in values)])
    _state["step"] += 1
    if _state["step"] %% 20 == 0:
        _state["file"].flush()
''' % (COLUMNS,)


class Recorder:
    """Our side: wraps :class:`~sapg_torchrl.training.update.PPOUpdate`'s loss call, gradient clipping and optimizer
    step to write :data:`COLUMNS` (one host read per step: a probe, not a training setting)."""

    def __init__(self, path: Path):
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(COLUMNS)
        self.step, self.row = 0, None

    def install(self) -> None:
        import torch
        from torch import distributions as D

        from sapg_torchrl.training import update

        recorder, build = self, update.PPOUpdate.__init__

        def init(self, *args, **kwargs):
            build(self, *args, **kwargs)
            keys, loss_forward, step = self.loss.tensor_keys, self.loss_forward, self.optimizer.step

            def forward(td):
                reference = D.Normal(td.get(keys.loc).clone(), td.get(keys.scale).clone())
                off = td.get(keys.relabelled).reshape(-1)
                norm = self.loss.value_norm
                target, stored = norm.normalize(td.get(keys.value_target)), norm.normalize(td.get(keys.value))
                out = loss_forward(td)
                kl = D.kl_divergence(D.Normal(out.get(keys.loc).detach(), out.get(keys.scale).detach()), reference)
                kl = kl.sum(-1).reshape(-1)
                gap = target - stored
                recorder.row = [self.lr, kl[~off].mean(), kl[off].mean() if off.any() else float("nan"), None,
                                out.get("value_clip_fraction"), gap.mean(), gap.abs().mean(), stored.std(),
                                target.std(), norm.mean, norm.scale()]  # fmt: skip
                return out

            def optimizer_step(*args, **kwargs):
                done = step(*args, **kwargs)
                recorder.write()
                return done

            self.loss_forward, self.optimizer.step = forward, optimizer_step

        clip = torch.nn.utils.clip_grad_norm_

        def clip_and_record(*args, **kwargs):
            norm = clip(*args, **kwargs)
            recorder.row[3] = norm
            return norm

        update.PPOUpdate.__init__ = init
        torch.nn.utils.clip_grad_norm_ = clip_and_record

    def write(self) -> None:
        self.writer.writerow([self.step, *(float(v) for v in self.row)])
        self.step += 1
        if self.step % STEPS_PER_ITERATION == 0:
            self.file.flush()


def patched_copy(code: Path, into: Path) -> Path:
    """A copy of the prepared released code (``released.py prepare``) with :data:`PROBE_EDITS`; returns its
    ``rl_games/`` folder."""
    if not (code / "rl_games" / "torch_runner.py").is_file():
        raise SystemExit(f"error: --code {code} is not a prepared rl_games/ folder (see released.py prepare)")
    from released import apply_edits

    target = into / "rl_games"
    shutil.copytree(code, target)
    apply_edits(target, PROBE_EDITS)
    (target / "rl_games" / "common" / "probe_log.py").write_text(PROBE_LOG)
    return target


def show(paths: list[Path], every: int) -> None:
    from compare import read_rows

    tables = [read_rows(path) for path in paths]
    iterations = min(len(rows) for rows in tables) // STEPS_PER_ITERATION
    print("| iteration | " + " | ".join(f"{path}: gap, clipped first / last, lr" for path in paths) + " |")
    print("|---" * (1 + len(tables)) + "|")
    for it in range(0, iterations, every):
        cells = []
        for rows in tables:
            steps = rows[it * STEPS_PER_ITERATION : (it + 1) * STEPS_PER_ITERATION]
            lr = statistics.mean(float(r["lr"]) for r in steps)
            cells.append(f"{float(steps[0]['signed_gap']):+.2f}, {float(steps[0]['value_clip']):.2f} / "
                         f"{float(steps[-1]['value_clip']):.2f}, {lr:.4f}")  # fmt: skip
        print(f"| {it} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("ours", help="our run (ours.py's settings; further arguments are Hydra overrides)")
    r = sub.add_parser("released", help="the released code, prepared by released.py")
    r.add_argument("--code", type=Path, required=True, help="the prepared rl_games/ folder")
    for p in (o, r):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--frames", type=float, default=6e5)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    s = sub.add_parser("show", help="per-iteration table of probe CSVs")
    s.add_argument("csv", type=Path, nargs="+")
    s.add_argument("--every", type=int, default=1, help="every k-th iteration")
    args, overrides = parser.parse_known_args(argv)
    if args.command == "show":
        if overrides:
            parser.error(f"unrecognised arguments: {' '.join(overrides)}")
        return show(args.csv, args.every)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists: remove it or choose another --out")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common = ["--seed", str(args.seed), "--frames", str(args.frames), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as scratch:
        if args.command == "ours":
            import ours

            Recorder(args.out).install()
            ours.main([*common, "--out", str(Path(scratch) / "run"), *overrides])
        else:
            if overrides:
                parser.error(f"unrecognised arguments: {' '.join(overrides)}")
            import released

            code = patched_copy(args.code, Path(scratch) / "code")
            os.environ["SAPG_PROBE_CSV"] = str(args.out.resolve())
            released.main(["run", "--code", str(code), *common, "--out", str(Path(scratch) / "run")])


if __name__ == "__main__":
    main()
