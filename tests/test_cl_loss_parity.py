"""Must show ("bars" check): a stock nnUNetTrainer and each weighting curriculum (nnUNetTrainerCLSuperLoss,
nnUNetTrainerCLSelfPacedMixture), built on the same tiny plans with batch_dice forced True, the same seed and the
same first batch, return the same train_step loss (within 1e-5) while their weights are all 1, and take the same
optimiser step. The curricula are past their warm-up, so the step goes through the weighted loss: SuperLoss with
lambda = 1e12 (sigma* = 1 to 1e-12), the mixture with every batch loss below lam' (planned from a state whose
estimates all exceed the batch losses). Runs in a subprocess (nnU-Net reads its folders at import)."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from nnunet_helpers import run_cli

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from clips_nnunet.trainers.family import nnUNetTrainerCLSuperLoss
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPacedMixture

    pre = os.path.join(os.environ["nnUNet_preprocessed"], sys.argv[1])
    plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
    plans["configurations"]["3d_fullres"]["batch_dice"] = True
    dataset_json = load_json(os.path.join(pre, "dataset.json"))


    class Recording:
        seen_weights = None

        def sample_weights(self, keys, losses, recorded=None):
            w = super().sample_weights(keys, losses, recorded)
            self.seen_weights = None if w is None else np.asarray(w, dtype=float).tolist()
            return w


    class SuperLossUnit(Recording, nnUNetTrainerCLSuperLoss):
        superloss_lambda = 1e12
        seed = 0


    class MixtureUnit(Recording, nnUNetTrainerCLSelfPacedMixture):
        warmup_epochs = 1
        seed = 0
        spl_soft_mechanism = "loss"      # weight the loss (the default samples instead and keeps self.loss)


    def build(cls):
        t = cls(plans={**plans, "continue_training": False}, configuration="3d_fullres", fold=0,
                dataset_json=dataset_json, device=torch.device("cpu"))
        t.num_epochs = 10
        return t


    stock = build(nnUNetTrainer)
    torch.manual_seed(0)
    stock.initialize()
    train_loader, val_loader = stock.get_dataloaders()
    batch = next(train_loader)
    stock.current_epoch = 1
    stock.on_train_epoch_start()
    reference = {k: v.detach().clone() for k, v in stock.network.state_dict().items()}
    out = {"stock": float(stock.train_step({**batch})["loss"]), "batch_dice": stock.configuration_manager.batch_dice}
    stock_params = [p.detach().clone() for p in stock.network.parameters()]

    for cls in (SuperLossUnit, MixtureUnit):
        t = build(cls)
        t.on_train_start()
        same_init = all(torch.equal(reference[k], v) for k, v in t.network.state_dict().items())
        ids = t._cl_case_ids
        t._cl_state.update(ids, 10.0 + np.arange(len(ids)), 0)   # every estimate far above the batch losses
        t.current_epoch = 1
        t.on_train_epoch_start()
        loss = float(t.train_step({**batch})["loss"])
        step = max(float((p - q).abs().max()) for p, q in zip(t.network.parameters(), stock_params))
        out[cls.__name__] = {"loss": loss, "weights": t.seen_weights, "same_init": same_init,
                             "spec_batch_dice": t._cl_spec.batch_dice, "param_diff": step,
                             "skipped": dict(t.clips_step_counts)}
    print("PARITY " + json.dumps(out), flush=True)
''')


def test_stock_and_weighting_curricula_take_the_same_step_with_unit_weights(tiny_preprocessed, tmp_path):
    base, env, dataset_id = tiny_preprocessed
    env = dict(env, nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="0")
    driver = tmp_path / "parity_driver.py"
    driver.write_text(DRIVER)
    proc = run_cli([sys.executable, str(driver), f"Dataset{dataset_id:03d}_ClipsTiny"], env, timeout=900)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PARITY ")][-1]
    out = json.loads(line[len("PARITY "):])
    assert out["batch_dice"] is True
    for name in ("SuperLossUnit", "MixtureUnit"):
        r = out[name]
        assert r["same_init"] and r["spec_batch_dice"] is True, r
        assert r["weights"] is not None and len(r["weights"]) == 2, r          # the weighted path was taken
        assert max(abs(w - 1.0) for w in r["weights"]) < 1e-9, r
        assert abs(r["loss"] - out["stock"]) < 1e-5, (name, r["loss"], out["stock"])
        assert r["param_diff"] < 1e-6, r                                       # the same optimiser step
        assert r["skipped"] == {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}
