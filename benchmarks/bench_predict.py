"""Overhead of ``clips-nnunet predict`` (DICOM in, mask/SEG/RTSTRUCT/report/MIP out) over nnU-Net's own predictor.

Both run in this process, on the same studies, with the same loaded nnU-Net model and settings:

* **baseline**: ``nnUNetPredictor.predict_from_files_sequential`` on the already converted NIfTI inputs
  (``{case}_0000`` CT on the PET grid, ``{case}_0001`` PET in SUV): nnU-Net's own pre-processing, sliding-window
  inference, resampling and NIfTI export, nothing else.
* **ours**: :func:`clips_nnunet.evaluation.predict.predict_dicom` from the DICOM folders: indexing and series choice,
  SUV conversion and CT resampling, the same nnU-Net call, then mask NIfTI, DICOM SEG, RTSTRUCT, report and MIP.

It prints seconds per study for both, the ratio ours / baseline, and our time split into its stages. By default it
makes a synthetic cohort (``clips-nnunet synth``, size ``small``) and an nnU-Net model with *untrained* weights
(planned on the converted cohort; inference cost does not depend on the weights, but the number of predicted
lesions drives the SEG/RTSTRUCT cost, so the breakdown shows it). Pass ``--cohort`` and ``-d/-c/-tr/-p/-f`` (with
the ``nnUNet_*`` variables set) to measure a real trained model on your own data.

    python benchmarks/bench_predict.py [-n 4] [--disable-tta] [--cohort DIR -d ID -c CONFIG -tr TRAINER -p PLANS]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _setup_untrained_model(work: Path, cohort: Path, dataset_id: int) -> None:
    """Convert ``cohort`` to an nnU-Net dataset, plan it (no preprocessing) and save an untrained checkpoint."""
    import subprocess

    from clips_nnunet.dataset_conversion.convert import convert_cohort

    convert_cohort(cohort, dataset_id, "BenchPredict", labels="seg", private_dir=work / "conv_private",
                   progress=False, n_folds=2)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
                    "--no_pp", "-np", "1"], check=True, capture_output=True,
                   env={**os.environ, "nnUNet_n_proc_DA": "1"})
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = maybe_convert_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        pm, cm, determine_num_input_channels(pm, cm, dataset_json),
        pm.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    folder = Path(get_output_folder(dataset_id, "nnUNetTrainer", "nnUNetPlans", "3d_fullres"))
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    # the keys nnUNetPredictor.initialize_from_trained_model_folder reads from a checkpoint
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=4, help="synthetic patients (default 4)")
    ap.add_argument("--cohort", type=Path, help="DICOM cohort to predict (default: a synthetic one)")
    ap.add_argument("-d", help="dataset id of a trained model (default: build an untrained one)")
    ap.add_argument("-c", default="3d_fullres")
    ap.add_argument("-tr", default="nnUNetTrainer")
    ap.add_argument("-p", default="nnUNetPlans")
    ap.add_argument("-f", nargs="+", default=["0"])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--disable-tta", action="store_true", help="no mirroring (both sides)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        if args.d is None:
            for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                (work / n).mkdir()
                os.environ[n] = str(work / n)
            os.environ.setdefault("nnUNet_compile", "false")
        from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort

        cohort = args.cohort
        if cohort is None:
            cohort = work / "cohort"
            make_synthetic_cohort(cohort, n_patients=args.n, seed=7, size="small", mask_formats=("seg",),
                                  progress=False)
        dataset = args.d
        if dataset is None:
            dataset = "993"
            t = time.perf_counter()
            _setup_untrained_model(work, cohort, int(dataset))
            print(f"(set-up: converted and planned the cohort, untrained model: {time.perf_counter() - t:.1f} s)")


        from clips_nnunet.dataset_conversion.convert import prepare_study
        from clips_nnunet.evaluation import predict as P

        spec = P.ModelSpec(dataset, args.c, args.tr, args.p, folds=args.f)
        predictor = P.CasePredictor(spec, device=args.device, use_mirroring=not args.disable_tta)
        selections, problems = P.find_studies([cohort])
        if problems:
            print("problems:", problems)

        # baseline inputs: the same conversion, written once (not timed)
        inputs = work / "nnunet_inputs"
        lists = []
        for i, sel in enumerate(selections):
            prep = prepare_study(sel, None, labels="none", label=f"study {i}")
            lists.append([str(P.write_nifti(prep.ct_on_pet, inputs / f"c{i:03d}_0000.nii.gz")),
                          str(P.write_nifti(prep.pet_suv, inputs / f"c{i:03d}_0001.nii.gz"))])
        stage = predictor.stages[-1]
        import contextlib
        import io

        for sub in ("warmup", "baseline_out"):
            (work / sub).mkdir()
        # warm-up (first call pays lazy initialisation on both sides)
        with contextlib.redirect_stdout(io.StringIO()):
            stage.predict_from_files_sequential(lists[:1], str(work / "warmup"), False, True, None)

        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            stage.predict_from_files_sequential(lists, str(work / "baseline_out"), False, True, None)
        baseline = time.perf_counter() - t

        # ours, with a stage breakdown from wrapped functions
        timings = {"convert (index, SUV, CT resampling)": 0.0, "nnU-Net": 0.0,
                   "outputs (NIfTI/SEG/RTSTRUCT/MIP/report)": 0.0}
        sub = {"DICOM SEG (highdicom)": 0.0, "RTSTRUCT": 0.0, "MIP PNG": 0.0}
        import clips_nnunet.dataset_conversion.convert as C
        import clips_nnunet.dataset_conversion.dicom_out as D
        import clips_nnunet.evaluation.mip as M

        def timed(key, fn, table=timings):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    table[key] += time.perf_counter() - t0
            return wrapper

        originals = (D.write_dicom_seg, D.write_rtstruct, M.save_coronal_mip)
        D.write_dicom_seg = timed("DICOM SEG (highdicom)", originals[0], sub)
        D.write_rtstruct = timed("RTSTRUCT", originals[1], sub)
        M.save_coronal_mip = timed("MIP PNG", originals[2], sub)

        orig_prepare, orig_predict, orig_outputs = C.prepare_study, predictor.predict, P.write_patient_outputs
        C.prepare_study = timed("convert (index, SUV, CT resampling)", orig_prepare)
        predictor.predict = timed("nnU-Net", orig_predict)
        P.write_patient_outputs = timed("outputs (NIfTI/SEG/RTSTRUCT/MIP/report)", orig_outputs)
        t = time.perf_counter()
        run = P.predict_dicom([cohort], work / "ours_out", spec, predictor=predictor, progress=False,
                              private_dir=work / "ours_private")
        ours = time.perf_counter() - t
        C.prepare_study, predictor.predict, P.write_patient_outputs = orig_prepare, orig_predict, orig_outputs
        D.write_dicom_seg, D.write_rtstruct, M.save_coronal_mip = originals

        n = len(selections)
        lesions = [r.n_lesions for r in run.results]
        print(f"studies: {n}, failed: {run.n_failed}, predicted lesions per study: {lesions}")
        print(f"device: {predictor.device.type}, mirroring TTA: {not args.disable_tta}")
        print(f"nnU-Net predictor on converted NIfTI (baseline): {baseline / n:7.2f} s/study")
        print(f"clips-nnunet predict from DICOM (ours):          {ours / n:7.2f} s/study")
        print(f"ratio ours / baseline: {ours / baseline:.2f}")
        for k, v in timings.items():
            print(f"  {k:<42} {v / n:7.2f} s/study")
            if k.startswith("outputs"):
                for k2, v2 in sub.items():
                    print(f"      {k2:<38} {v2 / n:7.2f} s/study")
        other = ours - sum(timings.values())
        print(f"  {'other (indexing, pseudonyms, temp files)':<42} {other / n:7.2f} s/study")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
