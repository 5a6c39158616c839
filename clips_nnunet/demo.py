"""The main job end to end on a synthetic DICOM cohort (``clips-nnunet demo``).

Steps, each the command a user runs on real data (printed before it runs, with the ``nnUNet_*`` variables that
point into the work folder, so it can be copied):

1. ``clips-nnunet synth`` a training cohort and, with another seed, two held-out patients (real DICOM: CT, PET
   with vendor-specific SUV headers, DICOM SEG and RTSTRUCT masks);
2. ``clips-nnunet convert`` the training cohort to an nnU-Net raw dataset (SUVbw, CT on the PET grid, masks);
3. ``nnUNetv2_plan_and_preprocess``;
4. ``nnUNetv2_train ... -tr nnUNetTrainerCLSelfPacedDemo``: a generated *budget subclass* of
   ``nnUNetTrainerCLSelfPaced`` (``workdir/ext/clips_demo_trainers.py``, found through ``nnUNet_extTrainer``;
   class attributes of :class:`~clips_nnunet.trainers.mixins.TimeBudgetMixin` and
   :class:`~clips_nnunet.trainers.mixins.FeaturesDivisorMixin`) whose ``num_epochs`` is fitted, from timed
   iterations on this machine, to the training share of ``--minutes``; with ``--tmtv`` also TMTV-Net's recipe
   (``clips-nnunet plan-tmtv``, ``nnUNetv2_preprocess -c 3d_tmtv``, ``nnUNetTrainerTMTVDemo``);
5. ``clips-nnunet predict`` the two held-out DICOM patients (mask, DICOM SEG, RTSTRUCT, report, MIP);
6. ``clips-nnunet evaluate`` the predicted masks against the generator's ground truth.

Resumable: a finished step leaves ``workdir/.steps/<step>.json`` (command, seconds) and is skipped on re-run;
an interrupted training continues with ``--c``.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from clips_nnunet.errors import ClipsError, DatasetError
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text, read_json
from clips_nnunet.nnunet_env import nnunet_environment, run_logged
from clips_nnunet.nnunet_env import shell_line as nnunet_shell_line
from clips_nnunet.trainers.mixins import TrainerClass, class_attributes, trainer_module_source

__all__ = ["DemoOptions", "DemoStep", "demo_budget", "demo_environment", "demo_steps", "run_demo",
           "demo_trainer_classes", "write_demo_trainers", "DEMO_TRAINER", "DEMO_TMTV_TRAINER"]

DEMO_TRAINER = "nnUNetTrainerCLSelfPacedDemo"
DEMO_TMTV_TRAINER = "nnUNetTrainerTMTVDemo"
DATASET_NAME = "ClipsDemo"
#: Minutes of the demo spent outside training (synth, convert, preprocess, predict, evaluate, start-ups), by device.
NON_TRAINING_MINUTES = {"cpu": 4.0, "cuda": 3.0}
ITERATIONS_PER_EPOCH = {"cpu": 25, "cuda": 50}
#: On CPU the demo's self-paced trainer divides the planned U-Net's features per stage by this (32..256 -> 8..64):
#: about 8x faster iterations, so the demo's minutes buy hundreds of iterations instead of a few dozen.
FEATURES_DIVISOR = {"cpu": 4, "cuda": 1}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """Options of :func:`run_demo` (the ``clips-nnunet demo`` flags)."""

    workdir: Path = Path("clips_demo")
    patients: int = 14
    minutes: float = 14.0
    tmtv: bool = False
    device: str = "auto"
    dataset_id: int = 981
    dry_run: bool = False
    heldout: int = 2
    seed: int = 0

    def validate(self) -> None:
        if self.patients < 6:
            raise ClipsError(f"--patients must be >= 6 (nnU-Net needs enough cases for its 5-fold split), got "
                             f"{self.patients}")
        if not (0 < self.minutes <= 24 * 60):
            raise ClipsError(f"--minutes must be in (0, 1440], got {self.minutes}")
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


def demo_budget(minutes: float, device: str, n_trainings: int = 1) -> Dict[str, Any]:
    """Training budget per training: ``seconds`` of the ``minutes`` left for training (the rest of the demo takes
    about :data:`NON_TRAINING_MINUTES`), shared by ``n_trainings``; iterations per epoch by device. The generated
    trainer fits the number of epochs to ``seconds`` from timed iterations on this machine (at most ``max_epochs``)."""
    seconds = max(60.0, (minutes - NON_TRAINING_MINUTES[device]) * 60.0) / max(1, n_trainings)
    iters = ITERATIONS_PER_EPOCH[device]
    return {"seconds": seconds, "iterations_per_epoch": iters, "val_iterations_per_epoch": 2,
            "calibration_iterations": 3, "max_epochs": 1000, "warmup_epochs": 2,
            "features_divisor": FEATURES_DIVISOR[device]}


def demo_trainer_classes(budget: Mapping[str, Any], tmtv: bool) -> List[TrainerClass]:
    """The demo's budget subclasses (data for :func:`clips_nnunet.trainers.mixins.trainer_module_source`):
    ``nnUNetTrainerCLSelfPacedDemo`` (time budget, narrower U-Net by ``features_divisor``, warm-up epochs) and,
    with ``tmtv``, ``nnUNetTrainerTMTVDemo`` (time budget)."""
    time_budget = class_attributes({
        "budget_seconds": float(budget["seconds"]),
        "budget_epochs": int(budget["max_epochs"]),  # until the calibration at the end of on_train_start
        "budget_max_epochs": int(budget["max_epochs"]),
        "budget_iterations_per_epoch": int(budget["iterations_per_epoch"]),
        "budget_val_iterations_per_epoch": int(budget["val_iterations_per_epoch"]),
        "budget_calibration_iterations": int(budget["calibration_iterations"])})
    mixins = "clips_nnunet.trainers.mixins"
    classes = [TrainerClass(DEMO_TRAINER, ((mixins, "TimeBudgetMixin"), (mixins, "FeaturesDivisorMixin"),
                                           ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPaced")),
                            time_budget + (("features_divisor", int(budget.get("features_divisor", 1))),
                                           ("warmup_epochs", int(budget["warmup_epochs"]))))]
    if tmtv:
        classes.append(TrainerClass(DEMO_TMTV_TRAINER, ((mixins, "TimeBudgetMixin"),
                                                        ("clips_nnunet.tmtv.recipe", "nnUNetTrainerTMTV")),
                                    time_budget))
    return classes


def write_demo_trainers(ext_dir: Path, budget: Mapping[str, Any], tmtv: bool) -> Path:
    """Write ``ext_dir/clips_demo_trainers.py`` with the demo's budget subclasses (imports and class attributes
    only; the behaviour is in :mod:`clips_nnunet.trainers.mixins`); returns its path."""
    doc = (f"Generated by clips-nnunet demo: budget subclasses ({float(budget['seconds']):.0f} s of training each, "
           f"epochs fitted from timed iterations by TimeBudgetMixin). Do not edit.")
    path = Path(ext_dir) / "clips_demo_trainers.py"
    atomic_write_text(path, trainer_module_source(demo_trainer_classes(budget, tmtv), doc))
    return path


def demo_environment(workdir: Path, device: str, base_env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``nnUNet_raw/preprocessed/results`` inside ``workdir``, ``nnUNet_extTrainer`` = our shim + ``workdir/ext``
    (+ the user's folders), from :func:`clips_nnunet.nnunet_env.nnunet_environment`."""
    env = nnunet_environment(workdir, ext_folders=[Path(workdir) / "ext"], base_env=base_env, keep_user_ext=False)
    if device == "cpu":  # one augmentation worker beside the main process (2 cores); 0 would break the planner,
        env.setdefault("nnUNet_n_proc_DA", "1")  # which calls torch.set_num_threads(nnUNet_n_proc_DA)
    return env


def demo_steps(options: DemoOptions, device: str) -> List[DemoStep]:
    """The steps of the demo for ``device`` (``cpu`` or ``cuda``), in order."""
    w = Path(options.workdir).resolve()
    did = str(options.dataset_id)
    train_dicom, heldout_dicom = w / "dicom" / "train", w / "dicom" / "heldout"
    budget = demo_budget(options.minutes, device, 2 if options.tmtv else 1)
    steps = [
        DemoStep("synth", f"synthetic DICOM cohort: {options.patients} training + {options.heldout} held-out patients",
                 [["clips-nnunet", "synth", str(train_dicom), "-n", str(options.patients), "--seed",
                   str(options.seed), "--quiet"],
                  ["clips-nnunet", "synth", str(heldout_dicom), "-n", str(options.heldout), "--seed",
                   str(options.seed + 1000), "--quiet"]], output=w / "dicom"),
        DemoStep("convert", "DICOM -> nnU-Net raw dataset (SUVbw, CT on the PET grid, SEG/RTSTRUCT masks)",
                 [["clips-nnunet", "convert", str(train_dicom), "-d", did, "-n", DATASET_NAME, "--private-dir",
                   str(w / "private" / "convert"), "--resume", "--quiet"]],
                 output=w / "nnUNet_raw" / f"Dataset{options.dataset_id:03d}_{DATASET_NAME}"),
        DemoStep("plan_and_preprocess", "nnU-Net fingerprint, plans and preprocessing",
                 [["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "1",
                   "--verify_dataset_integrity"]], output=w / "nnUNet_preprocessed"),
        DemoStep("trainers", f"budget subclasses in {w / 'ext'}: {budget['seconds']:.0f} s of training each, "
                             f"{budget['iterations_per_epoch']} iterations per epoch",
                 action=lambda: write_demo_trainers(w / "ext", budget, options.tmtv), output=w / "ext"),
    ]
    trainings = [(DEMO_TRAINER, "3d_fullres")]
    if options.tmtv:
        steps.append(DemoStep("plan_tmtv", "TMTV-Net recipe plans (3d_tmtv at 6 mm) and preprocessing",
                              [["clips-nnunet", "plan-tmtv", "-d", did],
                               ["nnUNetv2_preprocess", "-d", did, "-c", "3d_tmtv", "-np", "1"]]))
        trainings.append((DEMO_TMTV_TRAINER, "3d_tmtv"))
    for trainer, config in trainings:
        fold_dir = (w / "nnUNet_results" / f"Dataset{options.dataset_id:03d}_{DATASET_NAME}"
                    / f"{trainer}__nnUNetPlans__{config}" / "fold_0")
        cmd = ["nnUNetv2_train", did, config, "0", "-tr", trainer, "-device", device]
        steps.append(DemoStep(f"train_{trainer}", f"train {trainer} ({config}, fold 0)", [cmd],
                              resume_command=[*cmd, "--c"], resume_if=fold_dir / "checkpoint_latest.pth",
                              output=fold_dir))
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
    if cmd[0].startswith("nnUNetv2") or (len(cmd) > 1 and cmd[1] in ("convert", "predict", "plan-tmtv")):
        return ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
    return ()


def shell_line(cmd: Sequence[str], env: Mapping[str, str]) -> str:
    """The command as a user would type it, with the nnU-Net variables it depends on."""
    return nnunet_shell_line(cmd, env, _echo_variables(cmd))


def _run_streamed(cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> int:
    """Run ``cmd``; its output goes to the terminal and to ``log_path``."""
    return run_logged(cmd, env, log_path, stream=True, variables=_echo_variables(cmd))


def _marker(workdir: Path, step: DemoStep) -> Path:
    return Path(workdir).resolve() / ".steps" / f"{step.name}.json"


def run_demo(options: DemoOptions, runner: Optional[Callable[[Sequence[str], Mapping[str, str], Path], int]] = None
             ) -> int:
    """Run (or with ``dry_run`` print) the demo; returns 0 on success. ``runner`` replaces the subprocess runner
    (tests)."""
    options.validate()
    device = options.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(options.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = demo_environment(workdir, device)
    runner = runner or _run_streamed
    steps = demo_steps(options, device)
    t_start = time.time()
    print(f"clips-nnunet demo: {len(steps)} steps in {workdir} on {device} (re-run to resume; finished steps are "
          f"skipped)\n  export " + " ".join(f"{k}={env[k]}" for k in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                      "nnUNet_results", "nnUNet_extTrainer")),
          flush=True)
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
            rc = runner(cmd, env, workdir / "logs" / f"{step.name}.log")
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
    summary = _summarise(workdir, options, timings, time.time() - t_start)
    print(summary, flush=True)
    atomic_write_text(workdir / "demo_summary.md", summary)
    return 0


def _summarise(workdir: Path, options: DemoOptions, timings: Mapping[str, float], wall: float) -> str:
    lines = ["", "clips-nnunet demo finished.", f"  wall time this run: {wall / 60:.1f} min; step times (s): "
             + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "  where everything is:",
             f"    DICOM cohorts:        {workdir / 'dicom'}",
             f"    nnU-Net raw dataset:  {workdir / 'nnUNet_raw'}",
             f"    trained models:       {workdir / 'nnUNet_results'}",
             f"    predictions:          {workdir / 'predictions'}  (per patient: mask.nii.gz, seg.dcm, rtstruct.dcm, "
             f"report.md/json, mip_coronal.png)",
             f"    evaluation:           {workdir / 'evaluation'}",
             f"    private mappings:     {workdir / 'private'}  (never share)",
             f"    logs:                 {workdir / 'logs'}"]
    for trainer in [DEMO_TRAINER] + ([DEMO_TMTV_TRAINER] if options.tmtv else []):
        summary = workdir / "evaluation" / trainer / "summary.json"
        if summary.is_file():
            dice = _mean_dice(read_json(summary))
            lines.append(f"  {trainer}: mean Dice on the {options.heldout} held-out patients = "
                         f"{'n/a' if dice is None else f'{dice:.3f}'} ({summary})")
    return "\n".join(lines) + "\n"


def _mean_dice(summary: Mapping) -> Optional[float]:
    """Mean Dice from an evaluation summary (looks for a ``dice`` entry holding a ``mean``)."""
    stack = [summary]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            d = item.get("dice")
            if isinstance(d, Mapping) and isinstance(d.get("mean"), (int, float)) and math.isfinite(d["mean"]):
                return float(d["mean"])
            if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d):
                return float(d)
            stack.extend(v for v in item.values() if isinstance(v, (Mapping, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (Mapping, list)))
    return None
