"""DDP synchronisation of the curriculum: 2 processes with torch.distributed's gloo backend on CPU, each seeing
different cases, gather (keys, losses, patch types) with sync_patch_records (what the trainer calls each epoch) and must end with identical difficulty state and
identical sampling probabilities (symmetric collectives, same rng seed)."""
from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from clips_nnunet.curriculum.schedulers import SelfPacedScheduler, finalize_probabilities
    from clips_nnunet.curriculum.state import DifficultyState
    from clips_nnunet.trainers.curriculum import sync_patch_records

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ids = [f"case_{i:04d}" for i in range(8)]
        state = DifficultyState(ids, ema_alpha=0.5)
        scheduler = SelfPacedScheduler(ids, pacing="linear", pacing_a=1.0, pacing_b=0.25, min_cases=2)
        rng = np.random.default_rng(1234)
        local_rng = np.random.default_rng(100 + rank)           # each rank draws different batches
        records = []
        for epoch in range(3):
            keys = [ids[i] for i in local_rng.integers(0, 8, size=4 + rank)]   # unequal counts per rank
            losses = [0.1 * ids.index(k) + 0.01 * rank + 0.001 * epoch for k in keys]
            fg = [i % 2 == 0 for i in range(len(keys))]
            all_keys, all_losses, all_fg = sync_patch_records(keys, losses, fg)
            assert len(all_fg) == len(all_keys)
            state.update(all_keys, all_losses, epoch)
            plan = scheduler.plan(state, epoch / 2, epoch, rng)
            p = finalize_probabilities(plan.probabilities, 0.05, warmup=False)
            records.append({"keys": all_keys, "p": p.tolist(), "est": state.estimates().tolist(),
                            "visits": state.visits.tolist()})
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(records, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_compute_identical_curricula(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, 2, str(tmp_path / "init"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1                                              # identical keys, state and probabilities
    for epoch, rec in enumerate(r0):
        assert len(rec["keys"]) == 4 + 5                         # both ranks' samples, rank order
        assert sum(rec["visits"]) == 9 * (epoch + 1)
        assert abs(sum(rec["p"]) - 1) < 1e-12


def test_sync_without_process_group_is_identity():
    from clips_nnunet.trainers.curriculum import sync_patch_records

    keys, losses, fg = sync_patch_records(["a", "b"], [0.5, 0.25], [True, False])
    assert keys == ["a", "b"] and losses.tolist() == [0.5, 0.25] and fg.tolist() == [True, False]
