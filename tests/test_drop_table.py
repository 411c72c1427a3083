"""experiments.drop_table on hand-written run directories: updates per evaluation, start,
scores, drops and lowest score against values computed by hand."""
import csv
import json
import os

import numpy as np
import pytest

from experiments import drop_table


def write_run(path, config, rows):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["phase", "epoch", "step", "env_steps", "seed",
                                          "critic_loss", "normalized_score"])
        w.writeheader()
        w.writerows(rows)


def test_table_against_hand_values(tmp_path, capsys):
    # off2on: 2 seeds, first epoch 2 x 250 updates: epoch starts at 0, 500, 750 updates.
    online = [[50.0, 10.0, 20.0], [40.0, 30.0, 35.0]]
    write_run(tmp_path / "off2on_n2",
              {"online": {"updates_per_epoch": 250, "first_epoch_multiplier": 2}},
              [{"phase": "online", "epoch": e, "step": e, "env_steps": 250 * e, "seed": s,
                "critic_loss": 1.0, "normalized_score": online[s][e]}
               for e in range(3) for s in range(2)])
    # continued CQL: step 0 (loaded members), 250, 500, 750; a training row without eval.
    offline = [[50.0, 55.0, 45.0, 60.0], [41.0, 42.0, 43.0, 44.0]]
    rows = [{"phase": "offline", "epoch": "", "step": 250 * i, "env_steps": 0, "seed": s,
             "critic_loss": 1.0, "normalized_score": offline[s][i]}
            for i in range(4) for s in range(2)]
    rows.insert(3, {"phase": "offline", "epoch": "", "step": 100, "env_steps": 0, "seed": 0,
                    "critic_loss": 2.0, "normalized_score": ""})
    write_run(tmp_path / "cql_n2", {"offline": {"init_from": "/members"}}, rows)
    assert drop_table.main([f"--sweep_dir={tmp_path}", "--sizes=2", "--at=500,750",
                            f"--out={tmp_path / 'fig'}"]) == 0
    with open(tmp_path / "fig" / "drop_table.csv") as f:
        got = {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}
    want = {  # start, at_500, drop_500, at_750, drop_750, min over (0, 750]
        ("off2on", 0): (50, 10, 40, 20, 30, 10), ("off2on", 1): (40, 30, 10, 35, 5, 30),
        ("cql", 0): (50, 45, 5, 60, -10, 45), ("cql", 1): (41, 43, -2, 44, -3, 42)}
    for k, (start, a5, d5, a7, d7, lo) in want.items():
        r = got[k]
        np.testing.assert_allclose([float(r[c]) for c in ("start", "at_500", "drop_500",
                                                           "at_750", "drop_750", "min")],
                                   [start, a5, d5, a7, d7, lo])
    table = capsys.readouterr().out
    assert "| 2 | off2on | 45.0 (50.0, 40.0) | 20.0 (10.0, 30.0) |" in table
    assert os.path.getsize(tmp_path / "fig" / "drop_curves.png") > 0


def test_refuses_a_run_without_a_starting_score(tmp_path):
    write_run(tmp_path / "cql_n2", {"offline": {"init_from": ""}},
              [{"phase": "offline", "epoch": "", "step": 250, "env_steps": 0, "seed": 0,
                "critic_loss": 1.0, "normalized_score": 5.0}])
    with pytest.raises(ValueError, match="init_from"):
        drop_table.main([f"--sweep_dir={tmp_path}", "--sizes=2", f"--out={tmp_path}/f"])
