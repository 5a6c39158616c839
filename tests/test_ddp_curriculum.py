"""DDP on CPU (torch.distributed gloo, 2 processes):

1. the weighted loss equals nnU-Net's own loss object with ``ddp=True`` and ``batch_dice=True`` (batch-Dice
   statistics all-gathered across ranks), values and gradients, and weights act on the gathered statistics;
2. the curriculum trainers' OWN hooks (``on_train_start``, ``on_train_epoch_start``, ``train_step``,
   ``on_train_epoch_end``) of every curriculum family, each rank drawing its own batches, end every epoch with
   identical probabilities, difficulty estimates and loss weights on both ranks; rank 0's history file holds them;
   the ranks draw different cases (seeds from the global rank).

nnU-Net wraps the network in DistributedDataParallel with CUDA device ids; the test subclass wraps it for CPU
(gloo) instead and rebuilds nnU-Net's loss with ``ddp=True`` and ``batch_dice=True``, so gradients, batch-Dice
statistics and every collective of the curriculum and of nnU-Net's epoch end run through the process group.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest


def _spawn(target, args_per_rank, timeout):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=a) for a in args_per_rank]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0], codes


# ------------------------------------------------------------------------------------------------ 1. the loss

def _loss_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from clips_nnunet.trainers.per_sample_loss import nnunet_loss_spec, weighted_nnunet_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for ignore in (None, 3):
            loss = DeepSupervisionWrapper(DC_and_CE_loss(
                {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": True}, {}, weight_ce=1, weight_dice=1,
                ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss), [4 / 7, 2 / 7, 1e-6])
            spec = nnunet_loss_spec(loss)
            g = torch.Generator().manual_seed(100 + rank)       # different tensors on each rank
            outs = [(2 * torch.randn(2, 3, s, s, s, generator=g)).requires_grad_() for s in (8, 4, 2)]
            tgts = [torch.randint(0, 3 if ignore is None else 4, (2, 1, s, s, s), generator=g).float()
                    for s in (8, 4, 2)]
            expected = loss(outs, tgts)
            g_expected = torch.autograd.grad(expected, outs)
            ones = torch.ones(2)
            ours = weighted_nnunet_loss(spec, outs, tgts, ones, weight_mean=torch.tensor(1.0))
            g_ours = torch.autograd.grad(ours, outs)
            three = weighted_nnunet_loss(spec, outs, tgts, 3 * ones, weight_mean=torch.tensor(3.0))
            results[str(ignore)] = {
                "expected": float(expected), "ours": float(ours), "three": float(three),
                "grad_diff": max(float((a - b).abs().max()) for a, b in zip(g_expected, g_ours))}
        with open(f"{out_dir}/loss_rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_weighted_loss_equals_nnunet_batch_dice_loss_under_ddp(tmp_path):
    _spawn(_loss_rank, [(r, str(tmp_path / "init"), str(tmp_path)) for r in range(2)], timeout=300)
    r0, r1 = (json.loads((tmp_path / f"loss_rank{r}.json").read_text()) for r in range(2))
    for ignore in ("None", "3"):
        for r in (r0, r1):
            assert abs(r[ignore]["ours"] - r[ignore]["expected"]) < 1e-6, r
            assert r[ignore]["grad_diff"] < 1e-7, r
            assert abs(r[ignore]["three"] - 3 * r[ignore]["expected"]) < 3e-6, r
        # the gathered Dice term is common to both ranks; the CE term is each rank's own
        assert r0[ignore]["expected"] != r1[ignore]["expected"]


# ------------------------------------------------------------------------------------------------ 2. the hooks

TRAINERS = [
    # one of each family, the soft self-paced variants, and the controls whose order needs the shared generator
    ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPaced"),
    ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPacedRandom"),
    ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPacedAnti"),
    ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPacedLinear"),
    ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPacedMixture"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLPredefined"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLPredefinedRandom"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLTransferTeacher"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLCompetence"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLBabySteps"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLDIH"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLDIHRandom"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLSuperLoss"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLSuperLossRandom"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLSelfPacedDiversity"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLTeacherStudent"),
    ("clips_nnunet.trainers.family", "nnUNetTrainerCLSmoothing"),
]
EPOCHS, STEPS = 3, 1


def _hooks_rank(rank: int, init_file: str, out_dir: str, dataset: str, trainers=TRAINERS) -> None:
    import importlib

    import torch
    import torch.distributed as dist
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    MetaLogger.plot_progress_png = lambda self, output_folder: None      # CPU budget; not under test here
    pre = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
    plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
    config = plans["configurations"]["3d_fullres"]
    config["batch_dice"] = True                                    # exercise the all-gather in the trainer
    config["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16, 32]   # CPU budget: narrow U-Net
    dataset_json = load_json(os.path.join(pre, "dataset.json"))
    probe_keys, probe_losses = None, np.array([-0.4, 0.05])
    records = {}
    try:
        for module, name in trainers:
            base = getattr(importlib.import_module(module), name)

            class Tiny(base):
                warmup_epochs = 1 if base.warmup_epochs else 0
                exploration_epsilon = 0.0 if base.exploration_epsilon == 0 else 0.1
                curriculum_plot_every = 1000
                spl_soft_mechanism = "loss"        # soft SPL: exercise the weighted loss's collectives too

                def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
                    super().__init__(plans, configuration, fold, dataset_json, device)
                    self.device = torch.device("cpu")            # nnU-Net's DDP __init__ assumes CUDA
                    self.grad_scaler = None
                    self.num_epochs, self.num_iterations_per_epoch = EPOCHS, STEPS

                def initialize(self):
                    self.is_ddp = False             # nnU-Net wraps with CUDA device ids; wrap for CPU below
                    try:
                        super().initialize()
                    finally:
                        self.is_ddp = True
                    self.network = DDP(self.network)             # gloo all-reduce of the gradients
                    self.loss = self._build_loss()               # ddp=True: batch-Dice statistics all-gathered

            Tiny.__name__ = name
            t = Tiny(plans={**plans, "continue_training": False}, configuration="3d_fullres", fold=0,
                     dataset_json=dataset_json, device=torch.device("cpu"))
            t.on_train_start()
            probe_keys = t._cl_case_ids[:2]
            epochs = []
            for epoch in range(EPOCHS):
                t.current_epoch = epoch
                t.on_train_epoch_start()
                outputs, keys = [], []
                for _ in range(STEPS):
                    batch = next(t.dataloader_train)
                    keys += [str(k) for k in batch["keys"]]
                    outputs.append(t.train_step(batch))
                t.on_train_epoch_end(outputs)
                weights = t.sample_weights(probe_keys, probe_losses) if t.uses_sample_weights() else None
                epochs.append({"p": np.asarray(t._cl_probabilities).tolist(),
                               "estimates": t._cl_state.estimates().tolist(), "visits": t._cl_state.visits.tolist(),
                               "weights": None if weights is None else np.asarray(weights).tolist(),
                               "keys": keys})
            dist.barrier()
            records[name] = {"epochs": epochs, "output_folder": t.output_folder}
            t.dataloader_train._finish() if hasattr(t.dataloader_train, "_finish") else None
        with open(f"{out_dir}/hooks_rank{rank}.json", "w") as f:
            json.dump(records, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_trainer_hooks_give_identical_curricula_on_two_ranks(tiny_preprocessed, tmp_path, monkeypatch):
    from clips_nnunet.trainers.curriculum import read_history

    base, env, dataset_id = tiny_preprocessed
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_def_n_proc", "nnUNet_compile", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("CLIPS_SEED", "3")
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    metadata = json.loads((raw / "case_metadata.json").read_text())
    csv = tmp_path / "teacher.csv"
    csv.write_text("case_id,difficulty\n" + "".join(f"{c},{m['planted_difficulty']:.4f}\n"
                                                      for c, m in sorted(metadata.items()) if m["split"] == "Tr"))
    monkeypatch.setenv("CLIPS_DIFFICULTY_CSV", str(csv))
    _spawn(_hooks_rank, [(r, str(tmp_path / "init"), str(tmp_path), f"Dataset{dataset_id:03d}_ClipsTiny")
                         for r in range(2)], timeout=1500)
    r0, r1 = (json.loads((tmp_path / f"hooks_rank{r}.json").read_text()) for r in range(2))
    assert set(r0) == set(r1) == {name for _, name in TRAINERS}
    drew_differently = False
    for name in r0:
        for e0, e1 in zip(r0[name]["epochs"], r1[name]["epochs"]):
            assert e0["p"] == e1["p"], name                      # identical probabilities, bit for bit
            assert e0["estimates"] == e1["estimates"] and e0["visits"] == e1["visits"], name
            assert e0["weights"] == e1["weights"], name
            assert abs(sum(e0["p"]) - 1) < 1e-9
            drew_differently |= e0["keys"] != e1["keys"]
        # both ranks' patches were gathered: every epoch folds 2 ranks x STEPS x batch 2 patch losses (the tiny
        # patch is the whole 32^3 image, so no background patch of a lesion case is skipped)
        assert sum(r0[name]["epochs"][-1]["visits"]) == EPOCHS * 2 * STEPS * 2, name
        h = read_history(r0[name]["output_folder"])
        assert h.epochs.tolist() == list(range(EPOCHS)), name
        np.testing.assert_allclose(h.probabilities, [e["p"] for e in r0[name]["epochs"]], rtol=1e-6, atol=1e-9)
    for name in ("nnUNetTrainerCLSuperLoss", "nnUNetTrainerCLSelfPacedMixture"):
        assert r0[name]["epochs"][-1]["weights"] is not None, name     # weighting trainers produced weights
    assert drew_differently                                    # per-rank sampling streams (global-rank seeds)
