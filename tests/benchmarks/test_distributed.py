"""Smoke test of the distributed benchmark: its --quick run (one process and DDP on 2 ranks)
writes every field, with the same loss curve for both layouts.

Speed is never asserted (the machine is shared); the equivalence and the fields are.
"""

from __future__ import annotations

import json

from benchmarks import distributed


def test_the_quick_run_writes_both_layouts_with_the_same_losses(tmp_path):
    out = tmp_path / "distributed.json"
    distributed.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    runs = {run["layout"]: run for run in result["runs"]}
    assert set(runs) == {"none", "ddp"}
    assert result["config"]["steps"] == 4 and len(runs["ddp"]["losses"]) == 4
    assert runs["none"]["max_loss_diff"] == 0.0
    assert runs["ddp"]["max_loss_diff"] <= 1e-4
    assert len(runs["ddp"]["rank_mb"]) == 2 and len(runs["none"]["rank_mb"]) == 1
    assert all(mb > 0 for run in runs.values() for mb in run["rank_mb"])
    assert all(run["step_s"] > 0 and run["tokens_per_s"] > 0 for run in runs.values())
