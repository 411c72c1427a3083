"""Every method runs end to end through the pipeline (tiny sizes), with its paper preset."""
import os

import numpy as np
import pytest

from o2o_jax import algorithm, pipeline
from tests.helpers import read_rows, tiny_config


@pytest.mark.parametrize("method", sorted(set(algorithm.names()) - {"off2on"}))
def test_method_runs_end_to_end(minari_root, tmp_path, method):
    cfg = tiny_config(tmp_path, method)
    algorithm.get(method).apply_preset(cfg)
    cfg.online.epochs = 2
    if cfg.online.train_every:   # training every env step (REDQ, AdaptiveBC): one call each
        cfg.online.updates_per_epoch = cfg.online.env_steps_per_epoch // cfg.online.train_every
    cfg.fqe.steps = cfg.prft.pr_steps = cfg.aca.align_steps = 20
    cfg.opt.pretrain_updates = 10          # both of OPT's online phases run
    cfg.bcq.update(vae_hidden_dims=(8, 8), actor_hidden_dims=(8, 8), critic_hidden_dims=(8, 8))
    cfg.iql.hidden_dims = cfg.td3.hidden_dims = (8, 8)
    summary = pipeline.run(cfg)
    assert np.isfinite(summary["final"]["per_seed_return"]).all()
    rows = read_rows(os.path.join(tmp_path, method))
    phases = {r["phase"] for r in rows}
    assert phases == ({"online"} if method in ("sac", "redq") else
                      {"offline", "fqe", "online"} if method == "fqe_init" else
                      {"offline", "pr", "online"} if method == "prft" else
                      {"offline", "align", "online"} if method == "aca" else
                      {"offline", "online"})
    online_rows = [r for r in rows if r["phase"] == "online" and r["critic_loss"]]
    assert all(np.isfinite(float(r["critic_loss"])) for r in online_rows)
    if method in ("sac", "redq"):
        assert all(float(r["offline_fraction"]) == 0.0 for r in online_rows)
    if method == "awac":
        assert all(r["awac_weight"] for r in online_rows)
    if method == "iql":
        assert all(float(r["value_loss"]) > 0 for r in online_rows)
    if method == "opt":
        flags = [float(r["opt_pretraining"]) for r in online_rows]
        assert flags[0] > 0.0 and flags[-1] == 0.0   # epoch means of the phase flag
    if method == "calql":   # offline halves of the batches carry real Monte-Carlo floors
        assert any(float(r["cql_floor_rate"]) > 0 for r in online_rows)
    if method == "cql_ft":
        assert all(float(r["cql_penalty"]) != 0.0 for r in online_rows)
