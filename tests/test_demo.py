"""The demo pipeline: step order, command construction, budget, generated trainers, step skipping on re-run.

A full demo run takes 23-34 min on 2 shared cores and is not part of the suite; its measured runs are in docs/demo.md.
The self-check and the progress lines: tests/test_demo_check.py."""
from __future__ import annotations

import importlib.util
import json

import pytest

from clips_nnunet.demo import (DEFAULT_EPOCHS, DEFAULT_PATIENTS, DEFAULT_PHANTOM, DEMO_TMTV_TRAINER, DEMO_TRAINER,
                               DemoOptions, demo_budget, demo_environment, demo_steps, run_demo, write_demo_trainers)
from clips_nnunet.demo.pipeline import add_demo_configuration
from clips_nnunet.errors import ClipsError


def test_steps_and_commands_cpu(tmp_path):
    options = DemoOptions(workdir=tmp_path / "w", patients=10, epochs=7, seed=3)
    steps = demo_steps(options, "cpu")
    names = [s.name for s in steps]
    assert names == ["synth", "convert", "plan_and_preprocess", "trainers", "configuration", f"train_{DEMO_TRAINER}",
                     f"predict_{DEMO_TRAINER}", f"evalinputs_{DEMO_TRAINER}", f"evaluate_{DEMO_TRAINER}"]
    w = (tmp_path / "w").resolve()
    by = {s.name: s for s in steps}
    # the cohort is always the same; --seed seeds the training only
    assert by["synth"].commands[0] == ["clips-nnunet", "synth", str(w / "dicom" / "train"), "-n", "10", "--seed", "0",
                                       "--phantom", "box", "--size", "small", "--quiet"]
    assert by["synth"].commands[1] == ["clips-nnunet", "synth", str(w / "dicom" / "heldout"), "-n", "2",
                                       "--seed", "1000", "--phantom", "box", "--size", "small", "--quiet"]
    # --phantom twin: the same cohort seeds, twins from the skull base to the thighs
    twin = demo_steps(DemoOptions(workdir=tmp_path / "w", patients=10, phantom="twin"), "cpu")[0].commands
    assert [c[c.index("--phantom") + 1] for c in twin] == ["twin", "twin"] and twin[1][4:7] == ["2", "--seed", "1000"]
    assert [c[c.index("--size") + 1] for c in twin] == ["trunk", "trunk"]
    # without --patients / --epochs each phantom has its own measured defaults
    for phantom, n in (("box", 14), ("twin", 24)):
        steps = demo_steps(DemoOptions(workdir=tmp_path / phantom, phantom=phantom), "cpu")
        assert steps[0].commands[0][4] == str(n) == str(DEFAULT_PATIENTS[phantom])
        assert next(s for s in steps if s.epochs).epochs == DEFAULT_EPOCHS[phantom]
    assert by["convert"].commands[0][:7] == ["clips-nnunet", "convert", str(w / "dicom" / "train"), "-d", "981",
                                             "-n", "ClipsDemo"]
    assert "--resume" in by["convert"].commands[0]
    plan = by["plan_and_preprocess"].commands[0]
    assert plan[plan.index("-npfp") + 1] == "1" and plan[plan.index("-np") + 1] == "1"
    train = by[f"train_{DEMO_TRAINER}"]
    assert train.commands[0] == ["nnUNetv2_train", "981", "3d_demo", "0", "-tr", DEMO_TRAINER, "-device", "cpu"]
    assert train.epochs == 7 and "7 epochs x 25 iterations, CLIPS_SEED=3" in train.title
    assert train.resume_command[-1] == "--c" and train.resume_if.name == "checkpoint_latest.pth"
    predict = by[f"predict_{DEMO_TRAINER}"].commands[0]
    assert predict[:3] == ["clips-nnunet", "predict", str(w / "dicom" / "heldout")]
    assert predict[predict.index("-tr") + 1] == DEMO_TRAINER and predict[predict.index("--device") + 1] == "cpu"
    assert predict[predict.index("-c") + 1] == "3d_demo"
    evaluate = by[f"evaluate_{DEMO_TRAINER}"].commands[0]
    assert evaluate[:2] == ["clips-nnunet", "evaluate"] and evaluate[-2] == str(w / "evaluation" / DEMO_TRAINER)


def test_tmtv_adds_recipe_steps_and_gpu_device(tmp_path):
    steps = demo_steps(DemoOptions(workdir=tmp_path, tmtv=True), "cuda")
    names = [s.name for s in steps]
    assert "configuration" not in names  # on GPU the planned 3d_fullres patch
    assert next(s for s in steps if s.name == f"train_{DEMO_TRAINER}").commands[0][2] == "3d_fullres"
    assert "plan_tmtv" in names and f"train_{DEMO_TMTV_TRAINER}" in names and f"evaluate_{DEMO_TMTV_TRAINER}" in names
    tmtv = next(s for s in steps if s.name == f"train_{DEMO_TMTV_TRAINER}")
    assert tmtv.commands[0][:6] == ["nnUNetv2_train", "981", "3d_tmtv", "0", "-tr", DEMO_TMTV_TRAINER]
    assert tmtv.commands[0][-2:] == ["-device", "cuda"]
    plan = next(s for s in steps if s.name == "plan_tmtv")
    assert plan.commands == [["clips-nnunet", "plan-tmtv", "-d", "981"],
                             ["nnUNetv2_preprocess", "-d", "981", "-c", "3d_tmtv", "-np", "1"]]


def test_budget_is_a_fixed_amount_of_learning():
    """Epochs x iterations, not seconds: the same on any machine; 25 iterations per epoch on CPU, 50 on GPU."""
    cpu = demo_budget("cpu", phantom="box")
    assert (cpu["epochs"], cpu["iterations_per_epoch"], cpu["val_iterations_per_epoch"]) == (50, 25, 2)
    assert demo_budget("cpu", phantom="twin")["epochs"] == DEFAULT_EPOCHS["twin"] == 150
    assert cpu["features_divisor"] == 4 and demo_budget("cuda")["features_divisor"] == 1
    assert demo_budget("cuda")["iterations_per_epoch"] == 50 and demo_budget("cpu", 80)["epochs"] == 80
    # uniform sampling for 30 % of the epochs before the self-paced curriculum starts
    assert cpu["warmup_epochs"] == 15 and demo_budget("cpu", 80)["warmup_epochs"] == 24
    assert demo_budget("cpu", 2)["warmup_epochs"] == 1
    assert "seconds" not in cpu


def test_cli_default_epochs_and_options(tmp_path):
    from clips_nnunet.cli import build_parser
    from clips_nnunet.cli import demo as cli_demo

    # the help's defaults are the demo's
    assert (cli_demo.DEFAULT_EPOCHS, cli_demo.DEFAULT_PATIENTS, cli_demo.DEFAULT_PHANTOM) == (
        DEFAULT_EPOCHS, DEFAULT_PATIENTS, DEFAULT_PHANTOM)
    args = build_parser().parse_args(["demo", "--workdir", str(tmp_path), "--seed", "7", "--epochs", "60"])
    assert (args.seed, args.epochs, args.phantom) == (7, 60, "box")
    assert build_parser().parse_args(["demo", "--phantom", "twin"]).phantom == "twin"
    with pytest.raises(SystemExit):  # the wall-clock budget is gone
        build_parser().parse_args(["demo", "--minutes", "14"])
    for bad in (DemoOptions(epochs=1), DemoOptions(seed=-1), DemoOptions(patients=5)):
        with pytest.raises(ClipsError):
            bad.validate()


def test_demo_configuration_is_fullres_with_a_smaller_patch(tmp_path):
    """3d_demo inherits 3d_fullres (same preprocessed data and network) with a 32^3 patch; an axis is a multiple of
    the network's downsampling and never above the planned patch."""
    import json

    plans = tmp_path / "nnUNetPlans.json"
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {
        "patch_size": [64, 48, 20], "architecture": {"arch_kwargs": {"strides": strides}}}}}))
    conf = add_demo_configuration(plans)
    assert conf == {"inherits_from": "3d_fullres", "patch_size": [32, 32, 16]}  # 20 -> 16 (multiple of 8)
    assert json.loads(plans.read_text())["configurations"]["3d_demo"] == conf
    assert json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"] == [64, 48, 20]
    with pytest.raises(ClipsError):
        add_demo_configuration(tmp_path / "missing.json")


def test_generated_trainers_are_budget_subclasses(tmp_path):
    budget = {"epochs": 9, "iterations_per_epoch": 4, "val_iterations_per_epoch": 2, "warmup_epochs": 1}
    path = write_demo_trainers(tmp_path, budget, tmtv=True)
    spec = importlib.util.spec_from_file_location("clips_demo_trainers_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from clips_nnunet.trainers.mixins import BudgetMixin, FeaturesDivisorMixin
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced
    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTV

    demo, tmtv = module.nnUNetTrainerCLSelfPacedDemo, module.nnUNetTrainerTMTVDemo
    assert demo.__bases__ == (BudgetMixin, FeaturesDivisorMixin, nnUNetTrainerCLSelfPaced)
    assert issubclass(tmtv, BudgetMixin) and issubclass(tmtv, nnUNetTrainerTMTV)
    assert not issubclass(tmtv, FeaturesDivisorMixin)
    assert demo.warmup_epochs == 1 and demo.features_divisor == 1  # no divisor in this budget
    for cls in (demo, tmtv):
        assert (cls.budget_epochs, cls.budget_iterations_per_epoch, cls.budget_val_iterations_per_epoch) == (9, 4, 2)
    assert "def " not in path.read_text()  # imports and class attributes only


def test_generated_cpu_trainer_builds_a_narrower_network(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    budget = demo_budget("cpu", phantom="box")
    path = write_demo_trainers(tmp_path, budget, tmtv=False)
    spec = importlib.util.spec_from_file_location("clips_demo_trainers_narrow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [32, 64, 128], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    manager = ConfigurationManager({"architecture": arch, "patch_size": [16, 16, 16]})
    net = module.nnUNetTrainerCLSelfPacedDemo.build_network_architecture(None, manager, 2, 2, True)
    first_conv = net.encoder.stages[0][0].convs[0].conv
    assert (first_conv.in_channels, first_conv.out_channels) == (2, 8)  # 32 // 4
    assert arch["arch_kwargs"]["features_per_stage"] == [32, 64, 128]  # the plans are not modified


def test_environment_points_into_workdir(tmp_path):
    env = demo_environment(tmp_path, "cpu", base_env={}, seed=5)
    assert env["CLIPS_SEED"] == "5"
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw")
    assert env["nnUNet_results"] == str(tmp_path / "nnUNet_results")
    assert env["nnUNet_extTrainer"].split(":")[-1] == str(tmp_path / "ext")
    assert env["nnUNet_n_proc_DA"] == "1"  # 0 makes nnU-Net's planner call torch.set_num_threads(0)
    assert env["nnUNet_def_n_proc"] == "1"  # not 8 torch-importing workers on a 2-core machine
    assert env["OMP_NUM_THREADS"] == "1"  # one PyTorch thread per training (BudgetMixin applies it)
    assert demo_environment(tmp_path, "cpu", base_env={"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"


def test_finished_steps_are_skipped_and_failures_stop(tmp_path, capsys, monkeypatch):
    """With a fake runner: a failing step stops the demo and leaves no marker; the re-run skips the finished steps
    and resumes the interrupted training with --c."""
    import clips_nnunet.demo.pipeline as demo

    monkeypatch.setattr(demo, "pair_with_ground_truth", lambda *a, **k: None)
    monkeypatch.setattr(demo, "add_demo_configuration", lambda *a, **k: None)
    calls = []
    fail_on = {"nnUNetv2_train"}

    def runner(cmd, env, log):
        calls.append(list(cmd))
        assert env["nnUNet_raw"].startswith(str(tmp_path.resolve())) and env["CLIPS_SEED"] == "0"
        if cmd[1] == "evaluate":  # a useful model, so that the self-check passes
            (tmp_path / "w" / "evaluation" / DEMO_TRAINER).mkdir(parents=True, exist_ok=True)
            (tmp_path / "w" / "evaluation" / DEMO_TRAINER / "summary.json").write_text(
                '{"metrics": {"dice": {"mean": 0.8}}}')
        return 1 if cmd[0] in fail_on else 0

    options = DemoOptions(workdir=tmp_path / "w", patients=8, epochs=5, device="cpu")
    assert run_demo(options, runner=runner) == 1
    assert [c[0:2] for c in calls] == [["clips-nnunet", "synth"], ["clips-nnunet", "synth"],
                                       ["clips-nnunet", "convert"], ["nnUNetv2_plan_and_preprocess", "-d"],
                                       ["nnUNetv2_train", "981"]]
    assert (tmp_path / "w" / "ext" / "clips_demo_trainers.py").is_file()
    assert all((tmp_path / "w" / d).is_dir() for d in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    out = capsys.readouterr()
    assert "$ nnUNet_raw=" in out.out and "nnUNetv2_train 981 3d_demo 0 -tr nnUNetTrainerCLSelfPacedDemo" in out.out
    assert "CLIPS_SEED=0 nnUNetv2_train" in out.out  # the printed command reproduces the seeded training
    assert "failed" in out.err

    # the training was interrupted after writing a checkpoint: the re-run continues it with --c
    fold = (tmp_path / "w").resolve() / "nnUNet_results" / "Dataset981_ClipsDemo" / \
        f"{DEMO_TRAINER}__nnUNetPlans__3d_demo" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"x")
    calls.clear()
    fail_on.clear()
    assert run_demo(options, runner=runner) == 0
    assert calls[0] == ["nnUNetv2_train", "981", "3d_demo", "0", "-tr", DEMO_TRAINER, "-device", "cpu", "--c"]
    assert [c[1] for c in calls[1:]] == ["predict", "evaluate"]
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == 3  # synth, convert, plan_and_preprocess (trainers is redone)
    assert "clips-nnunet demo finished." in out and "held-out mean Dice 0.800 >= 0.5" in out
    calls.clear()
    assert run_demo(options, runner=runner) == 0 and calls == []  # everything finished: nothing runs
    with pytest.raises(ClipsError, match="seed 0"):  # the work folder holds the run of another seed
        run_demo(DemoOptions(workdir=tmp_path / "w", patients=8, epochs=5, device="cpu", seed=1), runner=runner)
    # a work folder of the demo before --phantom (no phantom recorded: box patients) resumes as box, not as twins
    record = json.loads((tmp_path / "w" / "demo_options.json").read_text())
    assert record["phantom"] == "box"
    del record["phantom"]
    (tmp_path / "w" / "demo_options.json").write_text(json.dumps(record))
    assert run_demo(options, runner=runner) == 0
    with pytest.raises(ClipsError, match=r"phantom box \(now phantom twin\)"):
        run_demo(DemoOptions(workdir=tmp_path / "w", patients=8, epochs=5, device="cpu", phantom="twin"),
                 runner=runner)


def test_dry_run_prints_and_runs_nothing(tmp_path, capsys):
    def runner(cmd, env, log):
        raise AssertionError("dry run must not run anything")

    assert run_demo(DemoOptions(workdir=tmp_path, dry_run=True, device="cpu"), runner=runner) == 0
    out = capsys.readouterr().out
    assert out.count("  $ ") == 7 and not (tmp_path / ".steps").exists()


@pytest.mark.parametrize("kwargs, message", [({"patients": 3}, "--patients"), ({"epochs": 0}, "--epochs"),
                                             ({"device": "tpu"}, "--device"), ({"dataset_id": 0}, "--dataset-id"),
                                             ({"phantom": "sphere"}, "--phantom")])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ClipsError, match=message):
        run_demo(DemoOptions(workdir=tmp_path, **kwargs))
