"""The main job end to end on a synthetic DICOM cohort (``clips-nnunet demo``).

Steps, each the command a user runs on real data (printed before it runs, with the ``nnUNet_*`` variables that
point into the work folder, so it can be copied):

1. ``clips-nnunet synth`` a training cohort and, with another seed, two held-out patients (real DICOM: CT, PET
   with vendor-specific SUV headers, DICOM SEG and RTSTRUCT masks);
2. ``clips-nnunet convert`` the training cohort to an nnU-Net raw dataset (SUVbw, CT on the PET grid, masks);
3. ``nnUNetv2_plan_and_preprocess``;
4. ``nnUNetv2_train ... -tr nnUNetTrainerCLSelfPacedDemo``: a generated *budget subclass* of
   ``nnUNetTrainerCLSelfPaced`` (``workdir/ext/clips_demo_trainers.py``, found through ``nnUNet_extTrainer``;
   class attributes of :class:`~clips_nnunet.trainers.mixins.BudgetMixin` and
   :class:`~clips_nnunet.trainers.mixins.FeaturesDivisorMixin`) with a fixed amount of learning: ``--epochs`` x
   :data:`ITERATIONS_PER_EPOCH` iterations, seeded by ``--seed`` (``CLIPS_SEED``); a slow machine trains as much,
   only longer. One progress line per epoch (:mod:`clips_nnunet.demo.progress`). With ``--tmtv`` also TMTV-Net's
   recipe (``clips-nnunet plan-tmtv``, ``nnUNetv2_preprocess -c 3d_tmtv``, ``nnUNetTrainerTMTVDemo``);
5. ``clips-nnunet predict`` the two held-out DICOM patients (mask, DICOM SEG, RTSTRUCT, report, MIP);
6. ``clips-nnunet evaluate`` the predicted masks against the generator's ground truth;
7. the self-check (:mod:`clips_nnunet.demo.check`): a held-out mean Dice below 0.5 is reported with its likely
   cause and exit code 1; "clips-nnunet demo finished" is printed only for a useful model.

Resumable: a finished step leaves ``workdir/.steps/<step>.json`` (command, seconds) and is skipped on re-run;
an interrupted training continues with ``--c``.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from clips_nnunet.demo.check import DICE_THRESHOLD, ModelCheck, check_model
from clips_nnunet.demo.progress import format_minutes, read_training_log, run_training
from clips_nnunet.errors import ClipsError, DatasetError
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text, read_json
from clips_nnunet.nnunet_env import nnunet_environment, run_logged
from clips_nnunet.nnunet_env import shell_line as nnunet_shell_line
from clips_nnunet.trainers.mixins import TrainerClass, class_attributes, patch_within_plan, trainer_module_source

__all__ = ["DemoOptions", "DemoStep", "demo_budget", "demo_environment", "demo_steps", "run_demo",
           "demo_trainer_classes", "write_demo_trainers", "DEMO_TRAINER", "DEMO_TMTV_TRAINER", "DEFAULT_EPOCHS",
           "DEFAULT_PATIENTS", "DEFAULT_PHANTOM", "ITERATIONS_PER_EPOCH"]

DEMO_TRAINER = "nnUNetTrainerCLSelfPacedDemo"
DEMO_TMTV_TRAINER = "nnUNetTrainerTMTVDemo"
DATASET_NAME = "ClipsDemo"
#: Seeds of the synthetic cohort: the training patients and the held-out patients are always the same cohort;
#: ``--seed`` seeds the training (``CLIPS_SEED``).
COHORT_SEED, HELDOUT_SEED = 0, 1000
#: The demo's synthetic patients (``--phantom``) and their ``clips-nnunet synth --size``: ``box`` (the default: the
#: analytic box phantom, ``small``: PET 48x48x64 at 4 mm, on which the demo's budget passes its self-check) or
#: ``twin`` (the lymphoma twin, ``synth``'s default phantom, ``trunk``: PET 108x64x64 at 8 mm from the skull base
#: to the upper thighs). On the twin the demo's model beats the best SUV threshold by >= 0.18 Dice on three seeds but
#: its held-out Dice (0.48-0.52) passes the self-check once (docs/demo.md, "The demo on the twin"): opt-in so far.
DEMO_SIZES = {"box": "small", "twin": "trunk"}
DEMO_PHANTOMS = tuple(DEMO_SIZES)
DEFAULT_PHANTOM = "box"
#: The demo's amount of learning per phantom: epochs x iterations per epoch (batch 2), and its training patients.
#: Measured on each cohort with three training seeds (docs/demo.md).
DEFAULT_EPOCHS = {"box": 50, "twin": 150}
DEFAULT_PATIENTS = {"box": 14, "twin": 24}
ITERATIONS_PER_EPOCH = {"cpu": 25, "cuda": 50}
VAL_ITERATIONS_PER_EPOCH = 2
#: Share of the epochs with uniform sampling before the self-paced curriculum starts. While the network still
#: predicts no lesion, the cases with the lowest loss are those with the least lesion volume: a self-paced
#: curriculum started too early hides the cases it needs to leave the all-background start (seen here: seed 1
#: with 2 warm-up epochs still had pseudo Dice 0.0 after 14 epochs, seed 2 took off in epoch 5).
WARMUP_FRACTION = 0.3
#: On CPU the demo's self-paced trainer divides the planned U-Net's features per stage by this (32..256 -> 8..64):
#: about 8x faster iterations on CPU.
FEATURES_DIVISOR = {"cpu": 4, "cuda": 1}
#: On CPU the demo trains nnU-Net configuration ``3d_demo``: ``3d_fullres`` (same preprocessed data, network and
#: spacing) with this smaller patch, about 4x fewer voxels per iteration than the planned 64x48x48 (docs/demo.md).
DEMO_PATCH_SIZE = (32, 32, 32)
DEMO_CONFIGURATION = {"cpu": "3d_demo", "cuda": "3d_fullres"}
#: For the estimate printed at the start only (the time left is then measured epoch by epoch): seconds per training
#: epoch of the demo network (the fastest epochs measured on this 2-core machine, docs/demo.md) and the minutes of
#: every other step together (synth, convert, plan, predict, evaluate, nnU-Net's start-up and final validation;
#: measured on the idle machine before issue 27). A shared machine takes 3x longer (docs/demo.md).
REFERENCE_SECONDS_PER_EPOCH = {"cpu": 9.0, "cuda": 5.0}
REFERENCE_OTHER_MINUTES = {"cpu": 3.0, "cuda": 3.0}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """Options of :func:`run_demo` (the ``clips-nnunet demo`` flags). ``epochs`` and ``patients`` None: the
    phantom's :data:`DEFAULT_EPOCHS` and :data:`DEFAULT_PATIENTS`."""

    workdir: Path = Path("clips_demo")
    patients: Optional[int] = None
    epochs: Optional[int] = None
    seed: int = 0
    tmtv: bool = False
    device: str = "auto"
    dataset_id: int = 981
    dry_run: bool = False
    heldout: int = 2
    phantom: str = DEFAULT_PHANTOM

    @property
    def n_patients(self) -> int:
        """The training patients: ``patients``, or the phantom's default."""
        return DEFAULT_PATIENTS[self.phantom] if self.patients is None else int(self.patients)

    def validate(self) -> None:
        if self.phantom not in DEMO_PHANTOMS:
            raise ClipsError(f"--phantom must be one of {', '.join(DEMO_PHANTOMS)}, got {self.phantom!r}")
        if self.n_patients < 6:
            raise ClipsError(f"--patients must be >= 6 (nnU-Net needs enough cases for its 5-fold split), got "
                             f"{self.n_patients}")
        if self.epochs is not None and not (2 <= self.epochs <= 10000):
            raise ClipsError(f"--epochs must be in 2..10000, got {self.epochs}")
        if not 0 <= self.seed < 2 ** 31:
            raise ClipsError(f"--seed must be in 0..2147483647, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ClipsError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not 1 <= self.dataset_id <= 999:
            raise ClipsError(f"--dataset-id must be 1..999, got {self.dataset_id}")
        if self.heldout < 1:
            raise ClipsError(f"held-out patients must be >= 1, got {self.heldout}")


@dataclasses.dataclass
class DemoStep:
    """One step: a name, the commands it runs (or a Python action) and where its result is."""

    name: str
    title: str
    commands: List[List[str]] = dataclasses.field(default_factory=list)
    action: Optional[Callable[[], None]] = None
    resume_command: Optional[List[str]] = None  # used instead of commands[0] when ``resume_if`` exists
    resume_if: Optional[Path] = None
    output: Optional[Path] = None
    epochs: int = 0  # a training step: its number of epochs (one progress line each)


def demo_budget(device: str, epochs: Optional[int] = None, phantom: str = DEFAULT_PHANTOM) -> Dict[str, Any]:
    """The training budget of each demo training: a fixed amount of learning, ``epochs`` (default the phantom's
    :data:`DEFAULT_EPOCHS`) x iterations per epoch by device, whatever the machine's speed."""
    n = int(epochs or DEFAULT_EPOCHS[phantom])
    return {"epochs": n, "iterations_per_epoch": ITERATIONS_PER_EPOCH[device],
            "val_iterations_per_epoch": VAL_ITERATIONS_PER_EPOCH, "warmup_epochs": int(round(WARMUP_FRACTION * n)),
            "features_divisor": FEATURES_DIVISOR[device]}


def estimated_minutes(budget: Mapping[str, Any], device: str, n_trainings: int = 1) -> float:
    """The demo's time on 2 idle CPU cores (or a GPU) from the measured reference speed: an estimate only."""
    per_epoch = REFERENCE_SECONDS_PER_EPOCH[device] * budget["iterations_per_epoch"] / ITERATIONS_PER_EPOCH[device]
    return REFERENCE_OTHER_MINUTES[device] + n_trainings * budget["epochs"] * per_epoch / 60.0


def demo_trainer_classes(budget: Mapping[str, Any], tmtv: bool) -> List[TrainerClass]:
    """The demo's budget subclasses (data for :func:`clips_nnunet.trainers.mixins.trainer_module_source`):
    ``nnUNetTrainerCLSelfPacedDemo`` (fixed budget, narrower U-Net by ``features_divisor``, warm-up epochs) and,
    with ``tmtv``, ``nnUNetTrainerTMTVDemo`` (fixed budget)."""
    fixed = class_attributes({
        "budget_epochs": int(budget["epochs"]),
        "budget_iterations_per_epoch": int(budget["iterations_per_epoch"]),
        "budget_val_iterations_per_epoch": int(budget["val_iterations_per_epoch"])})
    mixins = "clips_nnunet.trainers.mixins"
    classes = [TrainerClass(DEMO_TRAINER, ((mixins, "BudgetMixin"), (mixins, "FeaturesDivisorMixin"),
                                           ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPaced")),
                            fixed + (("features_divisor", int(budget.get("features_divisor", 1))),
                                     ("warmup_epochs", int(budget["warmup_epochs"]))))]
    if tmtv:
        classes.append(TrainerClass(DEMO_TMTV_TRAINER, ((mixins, "BudgetMixin"),
                                                        ("clips_nnunet.tmtv.recipe", "nnUNetTrainerTMTV")), fixed))
    return classes


def write_demo_trainers(ext_dir: Path, budget: Mapping[str, Any], tmtv: bool) -> Path:
    """Write ``ext_dir/clips_demo_trainers.py`` with the demo's budget subclasses (imports and class attributes
    only; the behaviour is in :mod:`clips_nnunet.trainers.mixins`); returns its path."""
    doc = (f"Generated by clips-nnunet demo: budget subclasses ({int(budget['epochs'])} epochs x "
           f"{int(budget['iterations_per_epoch'])} iterations each, BudgetMixin). Do not edit.")
    path = Path(ext_dir) / "clips_demo_trainers.py"
    atomic_write_text(path, trainer_module_source(demo_trainer_classes(budget, tmtv), doc))
    return path


def demo_environment(workdir: Path, device: str, base_env: Optional[Mapping[str, str]] = None,
                     seed: Optional[int] = None) -> Dict[str, str]:
    """``nnUNet_raw/preprocessed/results`` inside ``workdir``, ``nnUNet_extTrainer`` = our shim + ``workdir/ext``
    (+ the user's folders), from :func:`clips_nnunet.nnunet_env.nnunet_environment`; ``CLIPS_SEED`` = ``seed``."""
    env = nnunet_environment(workdir, ext_folders=[Path(workdir) / "ext"], base_env=base_env, keep_user_ext=False)
    if seed is not None:
        env["CLIPS_SEED"] = str(int(seed))
    if device == "cpu":  # one augmentation worker beside the main process (2 cores); 0 would break the planner,
        env.setdefault("nnUNet_n_proc_DA", "1")  # which calls torch.set_num_threads(nnUNet_n_proc_DA)
        # nnU-Net's default of 8 processes (fingerprint, final validation export, prediction) each import torch:
        # three demos side by side filled 24 GB and thrashed (seen here)
        env.setdefault("nnUNet_def_n_proc", "1")
        # one PyTorch thread (BudgetMixin applies OMP_NUM_THREADS): nnUNetv2_train -device cpu takes every core, and
        # on a shared machine its threads wait for each other (seen here under load ~23: no epoch done in 6 min)
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def demo_steps(options: DemoOptions, device: str) -> List[DemoStep]:
    """The steps of the demo for ``device`` (``cpu`` or ``cuda``), in order."""
    w = Path(options.workdir).resolve()
    did = str(options.dataset_id)
    train_dicom, heldout_dicom = w / "dicom" / "train", w / "dicom" / "heldout"
    budget = demo_budget(device, options.epochs, options.phantom)
    plans_path = w / "nnUNet_preprocessed" / f"Dataset{options.dataset_id:03d}_{DATASET_NAME}" / "nnUNetPlans.json"
    steps = [
        DemoStep("synth", f"synthetic DICOM cohort ({options.phantom} phantom): {options.n_patients} training + "
                          f"{options.heldout} held-out patients",
                 [["clips-nnunet", "synth", str(train_dicom), "-n", str(options.n_patients), "--seed",
                   str(COHORT_SEED), "--phantom", options.phantom, "--size", DEMO_SIZES[options.phantom], "--quiet"],
                  ["clips-nnunet", "synth", str(heldout_dicom), "-n", str(options.heldout), "--seed",
                   str(HELDOUT_SEED), "--phantom", options.phantom, "--size", DEMO_SIZES[options.phantom], "--quiet"]],
                 output=w / "dicom"),
        DemoStep("convert", "DICOM -> nnU-Net raw dataset (SUVbw, CT on the PET grid, SEG/RTSTRUCT masks)",
                 [["clips-nnunet", "convert", str(train_dicom), "-d", did, "-n", DATASET_NAME, "--private-dir",
                   str(w / "private" / "convert"), "--resume", "--quiet"]],
                 output=w / "nnUNet_raw" / f"Dataset{options.dataset_id:03d}_{DATASET_NAME}"),
        DemoStep("plan_and_preprocess", "nnU-Net fingerprint, plans and preprocessing",
                 [["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-npfp", "1", "-np", "1",
                   "--verify_dataset_integrity"]], output=w / "nnUNet_preprocessed"),
        DemoStep("trainers", f"budget subclasses in {w / 'ext'}: {budget['epochs']} epochs x "
                             f"{budget['iterations_per_epoch']} iterations each (seed {options.seed})",
                 action=lambda: write_demo_trainers(w / "ext", budget, options.tmtv), output=w / "ext"),
    ]
    if DEMO_CONFIGURATION[device] != "3d_fullres":
        steps.append(DemoStep("configuration", f"nnU-Net configuration {DEMO_CONFIGURATION[device]}: 3d_fullres with "
                                               f"a {'x'.join(map(str, DEMO_PATCH_SIZE))} patch (faster on CPU)",
                              action=lambda: add_demo_configuration(plans_path), output=plans_path))
    trainings = [(DEMO_TRAINER, DEMO_CONFIGURATION[device])]
    if options.tmtv:
        steps.append(DemoStep("plan_tmtv", "TMTV-Net recipe plans (3d_tmtv at 6 mm) and preprocessing",
                              [["clips-nnunet", "plan-tmtv", "-d", did],
                               ["nnUNetv2_preprocess", "-d", did, "-c", "3d_tmtv", "-np", "1"]]))
        trainings.append((DEMO_TMTV_TRAINER, "3d_tmtv"))
    for trainer, config in trainings:
        fold_dir = (w / "nnUNet_results" / f"Dataset{options.dataset_id:03d}_{DATASET_NAME}"
                    / f"{trainer}__nnUNetPlans__{config}" / "fold_0")
        cmd = ["nnUNetv2_train", did, config, "0", "-tr", trainer, "-device", device]
        steps.append(DemoStep(f"train_{trainer}", f"train {trainer} ({config}, fold 0): {budget['epochs']} epochs x "
                                                  f"{budget['iterations_per_epoch']} iterations, CLIPS_SEED={options.seed}",
                              [cmd], resume_command=[*cmd, "--c"], resume_if=fold_dir / "checkpoint_latest.pth",
                              output=fold_dir, epochs=int(budget["epochs"])))
    for trainer, config in trainings:
        out = w / "predictions" / trainer
        steps.append(DemoStep(
            f"predict_{trainer}", f"predict the held-out DICOM patients with {trainer}",
            [["clips-nnunet", "predict", str(heldout_dicom), "-o", str(out), "-d", did, "-c", config, "-tr",
              trainer, "-f", "0", "--device", device, "--private-dir", str(w / "private" / "predict"),
              "--no-progress"]], output=out))
        steps.append(DemoStep(f"evalinputs_{trainer}", "pair predicted masks with the generator's ground truth",
                              action=lambda t=trainer: pair_with_ground_truth(w, t, heldout_dicom),
                              output=w / "evaluation" / trainer / "inputs"))
        steps.append(DemoStep(
            f"evaluate_{trainer}", f"evaluate {trainer} on the held-out patients",
            [["clips-nnunet", "evaluate", str(w / "evaluation" / trainer / "inputs" / "pred"),
              str(w / "evaluation" / trainer / "inputs" / "gt"), "--pet-dir",
              str(w / "evaluation" / trainer / "inputs" / "pet"), "-o", str(w / "evaluation" / trainer),
              "--quiet"]], output=w / "evaluation" / trainer))
    return steps


def add_demo_configuration(plans_path: Path, name: str = DEMO_CONFIGURATION["cpu"],
                           patch_size: Sequence[int] = DEMO_PATCH_SIZE) -> Dict[str, Any]:
    """Add configuration ``name`` to nnU-Net's plans: ``3d_fullres`` (``inherits_from``: same preprocessed data,
    spacing and network) with ``patch_size``, each axis at most the planned one and a multiple of the network's
    total downsampling on that axis. Returns the new configuration."""
    if not Path(plans_path).is_file():
        raise DatasetError(f"{plans_path} is missing: run nnUNetv2_plan_and_preprocess first")
    plans = read_json(plans_path)
    try:
        full = plans["configurations"]["3d_fullres"]
        planned = [int(v) for v in full["patch_size"]]
        strides = full["architecture"]["arch_kwargs"]["strides"]
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{plans_path}: no 3d_fullres configuration with patch_size and strides ({exc})") from None
    patch = patch_within_plan(patch_size, planned, strides)
    configuration = {"inherits_from": "3d_fullres", "patch_size": patch}
    if plans["configurations"].get(name) != configuration:
        plans["configurations"][name] = configuration
        atomic_write_json(plans_path, plans)
    return configuration


def pair_with_ground_truth(workdir: Path, trainer: str, heldout_dicom: Path) -> None:
    """Copy each predicted ``mask.nii.gz`` and the generator's ground-truth label and SUV of the same study into
    ``evaluation/<trainer>/inputs/{pred,gt,pet}/<pseudonym>...`` (joined on the StudyInstanceUID through the private
    pseudonym map of ``clips-nnunet predict`` and the generator's manifest); names stay pseudonymous."""
    from clips_nnunet.synthetic.dicom_cohort import load_manifest
    from clips_nnunet.prediction.predict import MAPPING_FILE

    mapping_path = workdir / "private" / "predict" / MAPPING_FILE
    if not mapping_path.is_file():
        raise DatasetError(f"{mapping_path} is missing: run the predict step first")
    pseudonyms = read_json(mapping_path)
    manifest = load_manifest(heldout_dicom)
    by_uid = {s["study_uid"]: s for s in manifest["studies"]}
    inputs = workdir / "evaluation" / trainer / "inputs"
    pred_root = workdir / "predictions" / trainer
    n = 0
    for pseudonym, entry in sorted(pseudonyms.items()):
        mask = pred_root / pseudonym / "mask.nii.gz"
        study = by_uid.get(entry.get("study_instance_uid"))
        if not mask.is_file() or study is None:
            continue
        for sub, src, name in (("pred", mask, f"{pseudonym}.nii.gz"),
                               ("gt", heldout_dicom / study["label_path"], f"{pseudonym}.nii.gz"),
                               ("pet", heldout_dicom / study["suv_path"], f"{pseudonym}_0001.nii.gz")):
            (inputs / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, inputs / sub / name)
        n += 1
    if n == 0:
        raise DatasetError(f"no predicted mask under {pred_root} matches a held-out study of {heldout_dicom}")


def _echo_variables(cmd: Sequence[str]) -> Sequence[str]:
    """The nnU-Net variables shown in front of a command: those it reads (nnU-Net's commands and the clips
    commands that write or read nnU-Net folders)."""
    folders = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
    if cmd[0] == "nnUNetv2_train":
        return folders + ("CLIPS_SEED",)
    if cmd[0].startswith("nnUNetv2") or (len(cmd) > 1 and cmd[1] in ("convert", "predict", "plan-tmtv")):
        return folders
    return ()


def shell_line(cmd: Sequence[str], env: Mapping[str, str]) -> str:
    """The command as a user would type it, with the nnU-Net variables it depends on."""
    return nnunet_shell_line(cmd, env, _echo_variables(cmd))


Runner = Callable[[Sequence[str], Mapping[str, str], Path], int]


def _run_streamed(cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> int:
    """Run ``cmd``; its output goes to the terminal and to ``log_path``."""
    return run_logged(cmd, env, log_path, stream=True, variables=_echo_variables(cmd))


def _marker(workdir: Path, step: DemoStep) -> Path:
    return Path(workdir).resolve() / ".steps" / f"{step.name}.json"


def _check_workdir_options(workdir: Path, options: DemoOptions, device: str, budget: Mapping[str, Any]) -> None:
    """A work folder holds one demo: re-running it with another seed, budget, cohort or device would mix runs."""
    record = {"seed": options.seed, "epochs": int(budget["epochs"]), "patients": options.n_patients,
              "heldout": options.heldout, "device": device, "dataset_id": options.dataset_id,
              "phantom": options.phantom}
    path = workdir / "demo_options.json"
    if path.is_file():
        before = {"phantom": "box", **read_json(path)}  # folders of the demo before the twin recorded no phantom
        changed = [k for k, v in record.items() if k in before and before[k] != v]
        if changed:
            raise ClipsError(f"{workdir} holds a demo run with " + ", ".join(f"{k} {before[k]}" for k in changed)
                             + f" (now {', '.join(f'{k} {record[k]}' for k in changed)}): resume it with the same "
                             f"options or give another --workdir")
    if not options.dry_run:
        atomic_write_json(path, record)


def _step_runner(step: DemoStep, runner: Optional[Runner]) -> Runner:
    if runner is not None:
        return runner
    if step.epochs:
        return lambda cmd, env, log: run_training(cmd, env, log, step.epochs, _echo_variables(cmd))
    return _run_streamed


def run_demo(options: DemoOptions, runner: Optional[Runner] = None) -> int:
    """Run (or with ``dry_run`` print) the demo; returns 0 for a useful model, 1 when a model fails the
    self-check (:func:`clips_nnunet.demo.check.check_model`) and the exit code of a failing step. ``runner``
    replaces the subprocess runner of every command (tests)."""
    options.validate()
    device = options.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(options.workdir).resolve()
    budget = demo_budget(device, options.epochs, options.phantom)
    if not options.dry_run:
        workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_options(workdir, options, device, budget)
    env = demo_environment(workdir, device, seed=options.seed)
    if not options.dry_run:  # nnU-Net's three folders must exist (clips-nnunet convert checks nnUNet_raw)
        for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(env[variable]).mkdir(parents=True, exist_ok=True)
    steps = demo_steps(options, device)
    trainings = [s for s in steps if s.epochs]
    t_start = time.time()
    estimate = estimated_minutes(budget, device, len(trainings))
    print(f"clips-nnunet demo: {len(steps)} steps in {workdir} on {device} (re-run to resume; finished steps are "
          f"skipped)\n  training: {budget['epochs']} epochs x {budget['iterations_per_epoch']} iterations per model, "
          f"seed {options.seed}; estimated {format_minutes(estimate * 60)} in all at the best speed measured on 2 "
          f"CPU cores" + (" " if device == "cpu" else " (GPU: much less) ") + "- a slower or busy machine trains "
          "just as much, only longer; the time left is printed after every epoch\n  export "
          + " ".join(f"{k}={env[k]}" for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                                "nnUNet_extTrainer", "CLIPS_SEED")), flush=True)
    timings: Dict[str, float] = {}
    for i, step in enumerate(steps, 1):
        marker = _marker(workdir, step)
        head = f"[{i}/{len(steps)}] {step.title}"
        if marker.is_file() and not options.dry_run and step.commands:  # Python-only steps are cheap: redone
            print(f"{head}: done before, skipped ({marker.name})", flush=True)
            timings[step.name] = float(read_json(marker).get("seconds", 0.0))
            continue
        print(head, flush=True)
        t0 = time.time()
        commands = list(step.commands)
        if step.resume_command is not None and step.resume_if is not None and step.resume_if.is_file():
            commands[0] = step.resume_command
        for cmd in commands:
            print(f"  $ {shell_line(cmd, env)}", flush=True)
            if options.dry_run:
                continue
            rc = _step_runner(step, runner)(cmd, env, workdir / "logs" / f"{step.name}.log")
            if rc != 0:
                print(f"clips-nnunet demo: step '{step.name}' failed (exit {rc}); log: "
                      f"{workdir / 'logs' / (step.name + '.log')}. Fix the cause and run the demo again: finished "
                      f"steps are skipped.", file=sys.stderr, flush=True)
                return rc
        if step.action is not None and not options.dry_run:
            step.action()
        if not options.dry_run:
            timings[step.name] = time.time() - t0
            atomic_write_json(marker, {"step": step.name, "commands": [shell_line(c, env) for c in commands],
                                       "seconds": timings[step.name]})
    if options.dry_run:
        return 0
    checks = self_check(workdir, options, trainings)
    summary = _summarise(workdir, checks, timings, time.time() - t_start)
    atomic_write_text(workdir / "demo_summary.md", summary)
    if all(c.useful for c in checks):
        print(summary, flush=True)
        return 0
    print(summary, file=sys.stderr, flush=True)
    return 1


def self_check(workdir: Path, options: DemoOptions, trainings: Sequence[DemoStep]) -> List[ModelCheck]:
    """:func:`clips_nnunet.demo.check.check_model` for each trained model, from its evaluation summary and the
    pseudo Dice of its training log."""
    checks = []
    for step in trainings:
        trainer = step.name[len("train_"):]
        path = workdir / "evaluation" / trainer / "summary.json"
        summary = read_json(path) if path.is_file() else None
        epochs = read_training_log(workdir / "logs" / f"{step.name}.log", step.epochs).history()
        checks.append(check_model(trainer, summary, epochs, options.heldout))
    return checks


def _summarise(workdir: Path, checks: Sequence[ModelCheck], timings: Mapping[str, float], wall: float) -> str:
    useful = all(c.useful for c in checks)
    head = ("clips-nnunet demo finished." if useful else
            f"clips-nnunet demo: FAILED its self-check: the model is not useful (held-out mean Dice below "
            f"{DICE_THRESHOLD}). Its outputs are kept for inspection; do not take them as a working result.")
    lines = ["", head] + [f"  {c.message}" for c in checks] + [
             f"  wall time this run: {wall / 60:.1f} min; step times (s): "
             + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "  where everything is:",
             f"    DICOM cohorts:        {workdir / 'dicom'}",
             f"    nnU-Net raw dataset:  {workdir / 'nnUNet_raw'}",
             f"    trained models:       {workdir / 'nnUNet_results'}  (progress.png per fold)",
             f"    predictions:          {workdir / 'predictions'}  (per patient: mask.nii.gz, seg.dcm, rtstruct.dcm, "
             f"report.md/json, mip_coronal.png)",
             f"    evaluation:           {workdir / 'evaluation'}  (summary.json, per_case.csv)",
             f"    private mappings:     {workdir / 'private'}  (never share)",
             f"    logs:                 {workdir / 'logs'}"]
    return "\n".join(lines) + "\n"
