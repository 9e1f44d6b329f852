# The A/B of benchmarks/README.md "On an H200": the update with BlockLogStd indexing (before) against index_select
# (after), two sapg runners side by side in one process, interleaved rounds. Run from benchmarks/ on a CUDA machine.
import argparse, sys, throughput as t, torch
from sapg_torchrl import nn as snn
new = snn.BlockLogStd.forward
def old(self, loc, block_id):
    log_std = self.log_std[block_id]
    if self.max_log_std is not None: log_std = log_std.clamp(max=self.max_log_std)
    return loc, log_std.exp().expand_as(loc)
class V:
    def __init__(s, name, fwd, cfg): s.name, s.fwd, s.v = name, fwd, t.SAPGVariant(name, cfg); s.frames = s.v.frames
    def iteration(s):
        snn.BlockLogStd.forward = s.fwd
        return s.v.iteration()
a = argparse.Namespace(device="cuda", env="torch_pendulum", num_envs=24576, horizon=None, epochs=None, rounds=3, warmup=1, iters=3)
cfg = t.compose_config("sapg", a)
vs = [V("index", old, cfg), V("index_select", new, cfg)]
s = t.measure(vs, 3, 1, {v.name: 3 for v in vs})
import statistics
for v in vs:
    for ph in ("update", "collect"):
        print(v.name, ph, statistics.median(x[ph] for r in s[v.name] for x in r))
print("per-round ratio index_select/index (update):", [round(statistics.median(x["update"] for x in s["index_select"][r]) / statistics.median(x["update"] for x in s["index"][r]), 3) for r in range(3)])
