"""Two processes joined by jax.distributed (two CPU devices each, talking over gloo) run
the pipeline as one program: the numbers of a single unsharded process, one run directory
written by the primary alone, a resume from the checkpoint both processes wrote, and a
fine-tuning of the members it saved."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from o2o_jax import pipeline
from tests.helpers import ROOT, numeric_rows, read_rows, tiny_config, two_cpu_devices_env

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {root!r})
os.environ["MINARI_DATASETS_PATH"] = {minari!r}
from tests.helpers import tiny_config, read_rows
from o2o_jax import pipeline
pid, port = int(sys.argv[1]), sys.argv[2]
if pid == 1:   # the non-primary process must not write into the run directory
    import builtins
    out_dir, real_open, real_replace = os.path.realpath({out_dir!r}), builtins.open, os.replace
    def guarded(path):
        if os.path.realpath(str(path)).startswith(out_dir):
            raise PermissionError(f"process 1 wrote {{path}}")
    def open_(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            guarded(file)
        return real_open(file, mode, *a, **k)
    def replace_(src, dst, *a, **k):
        guarded(dst)
        return real_replace(src, dst, *a, **k)
    builtins.open, os.replace = open_, replace_
dist = {{"distributed.coordinator_address": f"localhost:{{port}}",
        "distributed.num_processes": 2, "distributed.process_id": pid}}
s = pipeline.run(tiny_config({out_dir!r}, "dist", num_seeds=2, **dist))
import jax
run = os.path.join({out_dir!r}, "dist")
out = {{"devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
       "process": jax.process_index(), "offline": s["offline"]["per_seed_return"],
       "final": s["final"]["per_seed_return"], "rows": read_rows(run)}}
# The same command again into the same directory resumes from its newest checkpoint
# (online, before the last epoch), restored on both processes.
s = pipeline.run(tiny_config({out_dir!r}, "dist", num_seeds=2, resume=True, **dist))
out.update(resumed_final=s["final"]["per_seed_return"], resumed_rows=read_rows(run))
# Fine-tuning the run's saved members (read on both processes, counters checked across
# them) repeats its online phase.
ft = {{**dist, "online.load_offline_from": os.path.join(run, "offline_members")}}
s = pipeline.run(tiny_config({out_dir!r}, "dist_ft", num_seeds=2, **ft))
out.update(ft_final=s["final"]["per_seed_return"])
print("RESULT", json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_and_resume(minari_root, tmp_path):
    script = SCRIPT.format(root=ROOT, minari=minari_root, out_dir=str(tmp_path))
    env = two_cpu_devices_env()
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script, str(pid), port], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    res = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[6:])
           for out, _ in outs]
    assert [r["process"] for r in res] == [0, 1]
    assert all(r["devices"] == 4 and r["local_devices"] == 2 for r in res)
    # The 2 seeds are split one per process (not both onto process 0's two devices).
    assert "[shard] 2 seeds over 2 of 4 devices" in outs[0][0]
    # Only the primary reports; the other process printed nothing of the run.
    assert "[offline" in outs[0][1] and "[offline" not in outs[1][1]
    assert "run directory" not in outs[1][0]

    # The numbers of one process holding both seeds, unsharded.
    ref = pipeline.run(tiny_config(tmp_path, "ref", num_seeds=2, shard_seeds=False))
    for r in res:   # every process returns the same summary
        np.testing.assert_allclose(r["offline"], ref["offline"]["per_seed_return"], rtol=1e-4)
        np.testing.assert_allclose(r["final"], ref["final"]["per_seed_return"], rtol=1e-4)
        np.testing.assert_allclose(r["resumed_final"], r["final"], rtol=1e-5)
        np.testing.assert_allclose(r["ft_final"], r["final"], rtol=1e-5)
    # One CSV, written once: the reference's rows and columns (losses to float tolerance).
    rows, ref_rows = res[0]["rows"], read_rows(os.path.join(tmp_path, "ref"))
    assert len(rows) == len(ref_rows) and rows[0].keys() == ref_rows[0].keys()
    for mine, theirs in zip(numeric_rows(rows), numeric_rows(ref_rows)):
        for k in mine:
            if mine[k] and k not in ("phase",):
                np.testing.assert_allclose(float(mine[k]), float(theirs[k]), rtol=2e-3,
                                           atol=1e-4, err_msg=k)
    # The resumed run rewrote the rows after its checkpoint to the same values.
    assert numeric_rows(res[0]["resumed_rows"]) == numeric_rows(rows)
    ckpts = os.listdir(os.path.join(tmp_path, "dist", "checkpoints"))
    assert len(ckpts) == 2 and all(
        os.path.exists(os.path.join(tmp_path, "dist", "checkpoints", c, "meta.json"))
        for c in ckpts)
