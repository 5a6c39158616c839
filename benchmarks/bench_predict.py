"""Overhead of ``clips-nnunet predict`` (DICOM in, mask/SEG/RTSTRUCT/report/MIP out) over nnU-Net's own predictor.

Both run in this process, on the same studies, with the same loaded nnU-Net model and settings:

* **baseline**: ``nnUNetPredictor.predict_from_files_sequential`` on the already converted NIfTI inputs
  (``{case}_0000`` CT on the PET grid, ``{case}_0001`` PET in SUV): nnU-Net's own reading, pre-processing,
  sliding-window inference, resampling and NIfTI export, nothing else.
* **ours**: :func:`clips_nnunet.prediction.predict.predict_dicom` from the DICOM folders: indexing and series choice,
  SUV conversion and CT resampling, the same nnU-Net inference, then mask NIfTI, DICOM SEG, RTSTRUCT, report and
  MIP (conversion and outputs in predict's worker processes while the main process runs nnU-Net).

It prints seconds per study for both, the ratio ours / baseline, our time split into its stages, and whether our
masks equal nnU-Net's own. By default the model is **briefly trained** here: a synthetic ``small`` cohort is
converted, planned by nnU-Net (default plans) and ``nnUNetTrainer`` runs ``--iterations`` training iterations on
the CPU, enough for the network to segment the hot lesions as lesions (a realistic number of predicted lesions,
which drives the SEG/RTSTRUCT cost; an untrained network predicts hundreds of fragments). The studies predicted
are a second synthetic cohort of ``--size`` (``small``: PET 48x48x64 at 4 mm; ``wholebody``: PET 200x200x350 at
2.5 mm with a 512x512x700 CT, several minutes to generate: generate it once with ``clips-nnunet synth DIR -n 1
--phantom box --size wholebody`` and pass ``--predict-cohort DIR``). ``--profile`` prints cProfile's top functions of one study's
conversion, prediction and outputs, run one after the other in this thread. Pass ``-d/-c/-tr/-p/-f`` (with the
``nnUNet_*`` variables set) to measure a model of your own.

``--repeats R`` measures baseline and ours R times in alternation (baseline, ours, baseline, ...) and prints each
repeat's ratio (with the load average), the median ratio and the ratio of the medians.

**GPU-speed inference on a CPU**: ``--shrink-features K`` divides the network's features per stage by ``K`` (at
least 2 each) before the brief training, so that nnU-Net's own step (pre-processing, a tiny network, resampling
and export) takes what a GPU's inference of the full network would, and our fixed cost per study shows. Besides
the ratio, every run prints **our seconds per study not overlapped with nnU-Net**: the wall time of ours minus
the wall time of its nnU-Net stage (the main thread's ``predict_images`` calls), divided by the number of studies,
i.e. the time during which nnU-Net (on a GPU: the GPU) waits for our index, conversion or outputs; the same in
**steady state** (the index's share per study plus the median wait for the conversions of studies 2..n: what
each further study of a long folder adds; the first conversion and the last outputs happen once per run); and our
own CPU seconds per study in all processes (CPU of ours and of its worker processes minus the CPU of its nnU-Net
stage, which runs in the main thread) against nnU-Net's CPU per study in the baseline.

    python benchmarks/bench_predict.py [-n 2] [--repeats 2] [--iterations 20] [--size small|wholebody]
        [--predict-cohort DIR] [--shrink-features K] [--model-dir DIR] [--disable-tta] [--profile] [--device cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET_ID = 993


def _shrink_features(plans: dict, divisor: int) -> list:
    """Divide the 3d_fullres network's features per stage by ``divisor`` (at least 2 each), in place; returns them."""
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [max(2, int(f) // divisor) for f in kwargs["features_per_stage"]]
    return kwargs["features_per_stage"]


def _train_briefly(work: Path, cohort: Path, iterations: int, device: str, shrink: int = 1) -> None:
    """Convert ``cohort``, plan and preprocess it with nnU-Net's defaults (features per stage divided by
    ``shrink``), train ``nnUNetTrainer`` (fold 0) for ``iterations`` iterations in this process and publish the
    weights as ``nnUNetTrainer__nnUNetPlans__3d_fullres``."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from clips_nnunet.dataset_conversion.convert import convert_cohort

    convert_cohort(cohort, DATASET_ID, "BenchPredict", labels="seg", private_dir=work / "conv_private",
                   progress=False, n_folds=2)
    proc = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                    "-c", "3d_fullres", "-np", "1"], capture_output=True, text=True,
                          env={**os.environ, "nnUNet_n_proc_DA": "1"})  # planning needs >= 1 thread
    if proc.returncode:
        raise RuntimeError(f"nnUNetv2_plan_and_preprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    class BriefTrainer(nnUNetTrainer):
        """``iterations`` training iterations in one epoch, one validation iteration."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = 1

    name = maybe_convert_to_dataset_name(DATASET_ID)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    if shrink > 1:
        print(f"(network features per stage: {_shrink_features(plans, shrink)})")
        (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    dataset_json = json.loads((pre / "dataset.json").read_text())
    torch.manual_seed(0)
    np.random.seed(0)
    plans["continue_training"] = False  # what nnU-Net's run_training passes to a fresh trainer
    trainer = BriefTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device(device))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.run_training()
    checkpoint = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"  # same network and inference settings; findable by nnU-Net
    folder = Path(get_output_folder(DATASET_ID, "nnUNetTrainer", "nnUNetPlans", "3d_fullres"))
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")


def _timed(table, key, fn, cpu_key=None):
    """``fn`` that adds its wall time to ``table[key]`` (and, with ``cpu_key``, its thread's CPU time)."""
    def wrapper(*a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            table[key] = table.get(key, 0.0) + time.perf_counter() - t0
            if cpu_key is not None:
                table[cpu_key] = table.get(cpu_key, 0.0) + time.thread_time() - c0
    return wrapper


NNUNET = "nnU-Net (pre-processing, inference, resampling)"
NNUNET_CPU = "cpu of the nnU-Net stage"


def _profile_one(P, selection, predictor, work: Path, top: int) -> None:
    """cProfile of one study's conversion, prediction and outputs, in this thread one after the other."""
    from clips_nnunet.dataset_conversion.convert import prepare_study

    profiler = cProfile.Profile()
    profiler.enable()
    t0 = time.perf_counter()
    prepared = prepare_study(selection, None, labels="none", label="PRED_prof")
    mask = predictor.predict_images([prepared.ct_on_pet, prepared.pet_suv], "PRED_prof")
    result = P._write_outputs(work / "profile_out" / "PRED_prof", "PRED_prof", "PRED_prof", selection, mask,
                              prepared, predictor.model_description(), False, [], t0)
    profiler.disable()
    print(f"\nprofile of one study ({result.status}, {time.perf_counter() - t0:.1f} s), top {top} by cumulative time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)


def _sleeping_stand_in(seconds: float):
    """``predict_images`` of a GPU stand-in: sleeps ``seconds`` (the CPU stays free, as while a GPU computes) and
    returns an empty mask on the PET grid."""
    def predict_images(images, case_id):
        import SimpleITK as sitk
        time.sleep(seconds)
        mask = sitk.Image(images[1].GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(images[1])
        return mask
    return predict_images


def _overlap_only(args, run_ours, P, n_of) -> None:
    """Ours alone on ``args.overlap_cohort``, ``--overlap-repeats`` times: seconds per study not overlapped with nnU-Net
    (whole run and steady state), our own CPU per study, and where the time went."""
    import numpy as np
    n = n_of()
    print(f"\n--overlap-cohort {args.overlap_cohort}: {n} studies, ours alone")
    rows = []
    for r in range(args.overlap_repeats or args.repeats):
        load = os.getloadavg()[0]
        timings: dict = {}
        wall, cpu, run = run_ours(r, timings, cohort=args.overlap_cohort, tag="_overlap")
        exposed = wall - timings.get(NNUNET, 0.0)
        own = cpu - timings.get(NNUNET_CPU, 0.0)
        steady = steady_state(run, n)
        rows.append((exposed / n, steady, own / n))
        print(f"repeat {r + 1} (load {load:4.1f}): ours {wall / n:7.2f} s/study, of it nnU-Net "
              f"{timings.get(NNUNET, 0.0) / n:7.2f}; not overlapped {exposed / n:6.2f} s/study (steady state "
              f"{steady:5.2f}); our own CPU {own / n:6.2f} s/study; failed {run.n_failed}", flush=True)
        print("  " + ", ".join(f"{k} {v / n:.2f}" for k, v in run.timings.items() if k not in ("total",))
              + " s/study")
    for name, col in (("not overlapped", 0), ("not overlapped, steady state", 1), ("our own CPU", 2)):
        values = [row[col] for row in rows]
        print(f"{name}: median {float(np.median(values)):.2f} s/study (range {min(values):.2f}-{max(values):.2f})")


def steady_state(run, n: int) -> float:
    """Seconds per study in which nnU-Net waits for us once the pipeline runs: the index's share per study plus
    the median time the main process waited for a conversion (receiving the images included) over studies 2..n
    (the first study's conversion and the last outputs are the pipeline's fill and drain, once per run)."""
    import numpy as np
    waits = [end - start for kind, k, start, end in run.events if kind == "wait_conversion" and k > 0]
    return run.timings["index"] / n + (float(np.median(waits)) if waits else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2, help="synthetic studies to predict (default 2)")
    ap.add_argument("--train-cases", type=int, default=4, help="synthetic training patients (default 4)")
    ap.add_argument("--iterations", type=int, default=20, help="training iterations (default 20)")
    ap.add_argument("--size", default="small", choices=("small", "wholebody"), help="size of the studies predicted")
    ap.add_argument("--predict-cohort", type=Path, help="DICOM cohort to predict (default: a synthetic one)")
    ap.add_argument("-d", help="dataset id of a trained model (default: train one briefly here)")
    ap.add_argument("-c", default="3d_fullres")
    ap.add_argument("-tr", default="nnUNetTrainer")
    ap.add_argument("-p", default="nnUNetPlans")
    ap.add_argument("-f", nargs="+", default=["0"])
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--disable-tta", action="store_true", help="no mirroring (both sides)")
    ap.add_argument("--model-dir", type=Path,
                    help="keep the model trained here in this folder (nnUNet_raw/preprocessed/results) and reuse "
                         "it when the folder holds it already: train once, measure several times")
    ap.add_argument("--shrink-features", type=int, default=1, metavar="K",
                    help="divide the trained network's features per stage by K (GPU-speed inference on a CPU; "
                         "only for the model trained here)")
    ap.add_argument("--overlap-cohort", type=Path,
                    help="after the comparison, predict this DICOM cohort (e.g. whole-body studies) --repeats times "
                         "with ours alone and print the seconds not overlapped with nnU-Net and our own CPU per "
                         "study (figures that need no baseline; the same run, model and machine)")
    ap.add_argument("--overlap-repeats", type=int, default=None, help="repeats on --overlap-cohort (default --repeats)")
    ap.add_argument("--overlap-gpu-seconds", type=float, default=None, metavar="S",
                    help="on --overlap-cohort, stand in for the GPU: nnU-Net's step sleeps S seconds per study and "
                         "predicts an empty mask (the CPU is free meanwhile, as with a GPU); default: the real model")
    ap.add_argument("--workers", type=int, default=None,
                    help="predict's worker processes (default: predict's own default for this machine)")
    ap.add_argument("--profile", action="store_true", help="cProfile one study's conversion, prediction, outputs")
    ap.add_argument("--repeats", type=int, default=2, help="alternating baseline/ours measurements (default 2)")
    ap.add_argument("--warmup-slices", type=int, default=48,
                    help="the warm-up predicts this many PET slices of study 0 (default 48)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        models = args.model_dir or work
        if args.d is None:
            for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                (models / n).mkdir(parents=True, exist_ok=True)
                os.environ[n] = str(models / n)
            os.environ.setdefault("nnUNet_compile", "false")
            os.environ.setdefault("nnUNet_n_proc_DA", "0")
            os.environ.setdefault("nnUNet_def_n_proc", "1")
        from clips_nnunet.dataset_conversion.convert import prepare_study
        from clips_nnunet.prediction import predict as P
        from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort

        dataset = args.d
        trained = (models / "nnUNet_results" / f"Dataset{DATASET_ID}_BenchPredict"
                   / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth")
        if dataset is None and trained.is_file():
            dataset = str(DATASET_ID)
            plans = json.loads((trained.parent.parent / "plans.json").read_text())
            print(f"(reusing the model trained earlier in {models}: features per stage "
                  f"{plans['configurations']['3d_fullres']['architecture']['arch_kwargs']['features_per_stage']})")
        if dataset is None:
            dataset = str(DATASET_ID)
            t = time.perf_counter()
            train_cohort = work / "train_cohort"
            make_synthetic_cohort(train_cohort, n_patients=args.train_cases, seed=7, size="small",
                                  mask_formats=("seg",), progress=False)
            _train_briefly(work, train_cohort, args.iterations, "cpu" if args.device == "auto" else args.device,
                           args.shrink_features)
            print(f"(set-up: {args.train_cases} small studies converted, planned and trained for {args.iterations} "
                  f"iterations: {time.perf_counter() - t:.0f} s)")
        cohort = args.predict_cohort
        if cohort is None:
            cohort = work / "predict_cohort"
            t = time.perf_counter()
            make_synthetic_cohort(cohort, n_patients=args.n, seed=11, size=args.size, mask_formats=("seg",),
                                  progress=False)
            print(f"(set-up: {args.n} {args.size} studies to predict generated: {time.perf_counter() - t:.0f} s)")

        from clips_nnunet.prediction.models import CasePredictor, ModelSpec
        spec = ModelSpec(dataset, args.c, args.tr, args.p, folds=args.f)
        predictor = CasePredictor(spec, device=args.device, use_mirroring=not args.disable_tta)
        selections, problems = P.find_studies([cohort])
        if problems:
            print("problems:", problems)

        # baseline inputs: the same conversion, written once (not timed); the warm-up input is a slab of study 0
        inputs = work / "nnunet_inputs"
        lists = []
        for i, sel in enumerate(selections):
            prep = prepare_study(sel, None, labels="none", label=f"study {i}")
            lists.append([str(P.write_nifti(prep.ct_on_pet, inputs / f"c{i:03d}_0000.nii.gz")),
                          str(P.write_nifti(prep.pet_suv, inputs / f"c{i:03d}_0001.nii.gz"))])
            if i == 0:
                slab = slice(0, min(prep.pet_suv.GetSize()[2], args.warmup_slices))
                warm = [str(P.write_nifti(im[:, :, slab], work / "warmup_in" / f"w000_{c:04d}.nii.gz"))
                        for c, im in enumerate((prep.ct_on_pet, prep.pet_suv))]
        stage = predictor.stages[-1]
        import highdicom  # noqa: F401 - what predict's workers import for the outputs: loaded, as after a first
        import matplotlib.figure  # noqa: F401 - run (the forked workers inherit it); a one-off command line run
        import scipy.spatial  # noqa: F401 - imports them in its workers while it reads the headers
        (work / "warmup_out").mkdir()
        with contextlib.redirect_stdout(io.StringIO()):  # warm-up: lazy initialisation (PyTorch, nnU-Net)
            stage.predict_from_files_sequential([warm], str(work / "warmup_out"), False, True, None)

        import resource

        def children_cpu() -> float:
            """CPU seconds of this process's ended and waited-for children (predict's worker processes, the
            index's header readers)."""
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            return ru.ru_utime + ru.ru_stime

        def run_baseline(r: int) -> tuple:
            """(wall, process CPU) seconds of nnU-Net's own predictor on the converted NIfTI files."""
            (work / f"baseline_out_{r}").mkdir()
            t, c = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                stage.predict_from_files_sequential(lists, str(work / f"baseline_out_{r}"), False, True, None)
            return time.perf_counter() - t, time.process_time() - c

        def run_ours(r: int, timings: dict, cohort=cohort, tag: str = ""):
            """predict_dicom; the CPU of its nnU-Net stage (main thread) from a wrapped predict_images, the rest
            of the breakdown from the run's own account (run.timings, run.events)."""
            original, stood_in = predictor.predict_images, "predict_images" in vars(predictor)
            predictor.predict_images = _timed(timings, NNUNET, original, NNUNET_CPU)
            try:
                t, c, cc = time.perf_counter(), time.process_time(), children_cpu()
                run = P.predict_dicom([cohort], work / f"ours_out{tag}_{r}", spec, predictor=predictor,
                                      progress=False, private_dir=work / f"ours_private{tag}_{r}",
                                      workers=args.workers)
                return time.perf_counter() - t, time.process_time() - c + children_cpu() - cc, run
            finally:
                if stood_in:
                    predictor.predict_images = original
                else:
                    del predictor.predict_images  # the instance attribute shadowed the method

        # repeats alternate the two sides (baseline, ours, baseline, ours, ...), so that a change of the machine's
        # load during the run affects both
        import numpy as np
        import SimpleITK as sitk

        n = len(selections)
        rows = []
        for r in range(args.repeats):
            load_b = os.getloadavg()[0]
            baseline, baseline_cpu = run_baseline(r)
            load_o = os.getloadavg()[0]
            timings: dict = {}
            ours, ours_cpu, run = run_ours(r, timings)
            exposed = ours - timings.get(NNUNET, 0.0)  # nnU-Net (a GPU) waits for us this long
            for key, seconds in run.timings.items():  # predict's own account
                if key not in ("nnunet", "total"):
                    where = "workers" if key.startswith(("convert", "outputs", "index_cpu")) else "main process"
                    timings[f"{where}: {key.replace('_', ' ')}"] = seconds
            steady = steady_state(run, n)
            own_cpu = ours_cpu - timings.get(NNUNET_CPU, 0.0)
            rows.append((baseline, ours, load_b, load_o, timings, run, exposed, own_cpu, baseline_cpu, steady))
            print(f"repeat {r + 1}: baseline {baseline / n:7.2f} s/study (load {load_b:4.1f}), ours {ours / n:7.2f} "
                  f"s/study (load {load_o:4.1f}), ratio {ours / baseline:.3f}; ours not overlapped with nnU-Net "
                  f"{exposed / n:6.2f} s/study (steady state {steady:5.2f}), our own CPU {own_cpu / n:6.2f} s/study "
                  f"(nnU-Net's own predictor: {baseline_cpu / n:6.2f} s CPU/study)", flush=True)

        run = rows[0][5]
        mapping = json.loads((work / "ours_private_0" / P.MAPPING_FILE).read_text())
        by_study = {e["study_instance_uid"]: p for p, e in mapping.items()}
        differing = []
        for i, sel in enumerate(selections):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "baseline_out_0" / f"c{i:03d}.nii.gz"))) > 0
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "ours_out_0" / by_study[sel.study_uid]
                                                          / "mask.nii.gz"))) > 0
            differing.append(int((a != b).sum()))

        print(f"studies: {n} ({args.size if args.predict_cohort is None else cohort}), failed: {run.n_failed}, "
              f"predicted lesions per study: {[r.n_lesions for r in run.results]}")
        print(f"device: {predictor.device.type}, mirroring TTA: {not args.disable_tta}, "
              f"voxels where our mask differs from nnU-Net's own: {differing}")
        med_b = float(np.median([row[0] for row in rows]))
        med_o = float(np.median([row[1] for row in rows]))
        print(f"nnU-Net predictor on converted NIfTI (baseline), median of {len(rows)}: {med_b / n:7.2f} s/study")
        print(f"clips-nnunet predict from DICOM (ours), median of {len(rows)}:          {med_o / n:7.2f} s/study")
        print(f"ratio ours / baseline: per repeat {[round(row[1] / row[0], 3) for row in rows]}, "
              f"median {float(np.median([row[1] / row[0] for row in rows])):.3f}, of the medians {med_o / med_b:.3f}")
        print(f"ours not overlapped with nnU-Net (wall of ours - wall of its nnU-Net stage), median of {len(rows)}: "
              f"{float(np.median([row[6] for row in rows])) / n:6.2f} s/study (per repeat "
              f"{[round(row[6] / n, 2) for row in rows]})")
        print(f"ours not overlapped in steady state (index per study + median wait for studies 2..n), median of "
              f"{len(rows)}: {float(np.median([row[9] for row in rows])):6.2f} s/study (per repeat "
              f"{[round(row[9], 2) for row in rows]})")
        print(f"our own CPU in all processes (CPU of ours and its workers - CPU of its nnU-Net stage), median: "
              f"{float(np.median([row[7] for row in rows])) / n:6.2f} s/study; nnU-Net's own predictor "
              f"{float(np.median([row[8] for row in rows])) / n:6.2f} s CPU/study")
        for k in rows[0][4]:
            if k == NNUNET_CPU:
                continue
            print(f"  {k:<48} " + " ".join(f"{row[4].get(k, 0.0) / n:7.2f}" for row in rows) + " s/study")
        if args.overlap_cohort is not None:
            if args.overlap_gpu_seconds is not None:
                predictor.predict_images = _sleeping_stand_in(args.overlap_gpu_seconds)  # run_ours wraps it
            _overlap_only(args, run_ours, P, n_of=lambda: len(P.find_studies([args.overlap_cohort])[0]))
        if args.profile:
            _profile_one(P, selections[0], predictor, work, 30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
