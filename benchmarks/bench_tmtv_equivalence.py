"""TMTV-Net against clips-nnunet, with TMTV-Net's own code: networks, data path and planted mismatches.

    python benchmarks/bench_tmtv_equivalence.py --tmtv-repo /tmp/TMTV-Net [--study DICOM_DIR] [--workdir DIR]

``--tmtv-repo`` is a local checkout of qurit-frizi/TMTV-Net (its ``main/src`` and ``main/main.py`` are imported
from there, never copied into this repository). The interpreter must have TMTV-Net's extra packages besides
clips-nnunet's: ``monai``, ``lz4``, ``rt_utils`` (+ ``opencv-python-headless``), ``mdutils``, ``pytz``, ``bokeh==2.4.3``
(+ ``tornado``); e.g. a venv whose ``.pth`` adds this project's site-packages, then ``pip install --no-deps`` of
those (docs/tmtv_import.md). TMTV-Net pins numpy 1.26 and bokeh 2.4.3 uses ``np.bool8``, removed in numpy 2:
the script sets ``np.bool8 = np.bool_`` before importing ``main.py``, and ``pydicom.read_file = pydicom.dcmread``
(removed in pydicom 3): the only two shims.

What it does (CPU, float32; prints one table per part and writes ``WORKDIR/equivalence.json``):

1. **Networks.** Random weights in TMTV-Net's own classes (``ModelStacking`` of 4
   ``SimpleMulticlassUNet_dice_ce_fov_v9_ds_lung_soft_hot_boundary``, ``Refiner_dice_ce_fov_v1_ds_lung_soft_hot_boundary``;
   every parameter redrawn, InstanceNorm affine included), saved with ``torch.save(state_dict)`` and re-loaded by
   TMTV-Net with ``strict=True``; imported with ``clips-nnunet import-tmtv`` into a dataset made from the DICOM study
   (``clips-nnunet convert``, nnU-Net's fingerprint and planner, ``clips-nnunet plan-tmtv``); our networks rebuilt
   by nnU-Net's ``initialize_from_trained_model_folder``. Logits of each stage-1 model, of the stacking layer and of
   the refiner on the same random HU/SUV batch.
2. **Planted mismatches** on stage-1 model 0: a transposed 3x3x3 kernel (first convolution, y<->x), CT and PET
   swapped, the input flipped left-right, the input shifted by one voxel. Each must move the logits far beyond the
   equivalence difference.
3. **Data path** on one DICOM study (default ``../shared/testdata/tcia_sts_001``: a GE PET with a cropped CT):
   TMTV-Net's ``DicomNiftiConversion.dicomToNifti`` (its SUV) + ``main.load_case`` (CT onto PET, -1024 fill, 6 mm,
   linear) + ``PreprocessDataV4_lung_soft_tissues_hot`` against ours: ``prepare_study`` (the converter's SUV and CT
   on the PET grid) + nnU-Net's preprocessing of ``3d_tmtv`` (6 mm, cubic spline) + ``WindowingLayer``. Windows
   compared voxel by voxel on the 6 mm grid, the sub-voxel offset between the two 6 mm grids computed from their
   geometry, and the same planted flips/shifts/swaps applied to our windows.
4. **Final mask** (``--final-mask``): TMTV-Net's ``main.inference_fn`` (stage-1 ensemble, 50 % tiles, central
   weighting, refiner at the native grid) against nnU-Net's predictor around the imported model (stacking, then
   the refiner with the stage-1 segmentation) on a crop of the study, with the random weights of part 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
import copy
import subprocess
import types

import SimpleITK as sitk

DATASET_ID = 997
DATASET_NAME = "TMTVEquivalence"
WINDOWS = ("ct", "ct_lung", "ct_soft", "suv", "suv_hot")
#: a mismatch counts as caught when it moves a logit by more than this (the equivalence is ~1e-5)
LOGIT_TOLERANCE = 1e-3
STAGE1, REFINE, TRAINER = "3d_tmtv", "3d_tmtv_refine", "nnUNetTrainerTMTV"


# ------------------------------------------------------------------------------------------- TMTV-Net's code
def load_tmtv_code(repo: Path) -> types.SimpleNamespace:
    """TMTV-Net's network classes and preprocessing, imported from the checkout ``repo``."""
    src = repo / "main" / "src"
    if not (src / "model_stacking.py").is_file():
        raise SystemExit(f"{repo} is not a TMTV-Net checkout (no main/src/model_stacking.py)")
    sys.path[:0] = [str(src), str(repo / "main")]
    from model_refiner_multiclass_deepsupervision_configured_v1 import \
        Refiner_dice_ce_fov_v1_ds_lung_soft_hot_boundary as refiner
    from model_stacking import ModelStacking
    from model_unet_multiclass_deepsupervision_configured_v1 import \
        SimpleMulticlassUNet_dice_ce_fov_v9_ds_lung_soft_hot_boundary as large_fov
    from preprocess import PreprocessDataV4_lung_soft_tissues_hot
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return types.SimpleNamespace(ModelLargeFov=large_fov, ModelRefiner=refiner, ModelStacking=ModelStacking,
                                 Preprocessing=PreprocessDataV4_lung_soft_tissues_hot, commit=commit)


def tmtv_main_modules():
    """TMTV-Net's ``main.py`` and ``DicomNiftiConversion``, with two aliases for today's libraries: bokeh 2.4.3
    needs ``np.bool8`` (removed in numpy 2) and TMTV-Net calls ``pydicom.read_file`` (removed in pydicom 3)."""
    import pydicom
    if not hasattr(np, "bool8"):
        np.bool8 = np.bool_
    if not hasattr(pydicom, "read_file"):
        pydicom.read_file = pydicom.dcmread
    import DicomNiftiConversion
    import main as tmtv_main
    return tmtv_main, DicomNiftiConversion


def _redraw(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter drawn anew: He-normal kernels, norm scales 1 +- 0.2, biases +- 0.1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _templates(tm):
    """One of each TMTV-Net network, built as ``main.py`` builds them, except that ``DeepSupervision``'s dummy
    forward (which only reads the channel counts of the outputs and their relative sizes, for the training-loss
    weights) runs on a (2, 5, 32, 32, 32) input instead of (2, 5, 96, 96, 96), without autograd, and the freed
    memory is handed back to the system: this runs on shared machines. The network is the same."""
    import ctypes
    import gc
    with torch.no_grad():
        templates = tm.ModelLargeFov(input_target_shape=(5, 32, 32, 32)), tm.ModelRefiner()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:   # not glibc
        pass
    return templates


def make_tmtv_models(tm, models_dir: Path, seed: int) -> bool:
    """TMTV-Net's ensemble (4 U-Nets + stacking) and refiner with random weights, saved as its release files
    (``torch.save(state_dict)``, as its ``TrainerV2.save_state``); False when the files of this seed exist."""
    stamp = models_dir / "seed.txt"
    if stamp.is_file() and stamp.read_text() == str(seed):
        return False
    gen = torch.Generator().manual_seed(seed)
    large_fov, refiner_template = _templates(tm)
    ensemble = tm.ModelStacking([large_fov] * 4)    # ModelStacking deep-copies each base model
    for m in [*ensemble.base_models, ensemble.staking_blocks]:
        _redraw(m, gen)
    refiner = copy.deepcopy(refiner_template)
    _redraw(refiner, gen)
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ensemble.state_dict(), models_dir / "e_latest.model")
    torch.save(refiner.state_dict(), models_dir / "r_latest.model")
    stamp.write_text(str(seed))
    return True


def load_tmtv_models(tm, models_dir: Path):
    """The saved files re-loaded by TMTV-Net's classes with ``strict=True`` (its ``partial`` shares one inner
    network: deep copies, as ``main.py`` makes)."""
    large_fov, refiner_template = _templates(tm)
    ensemble = tm.ModelStacking([large_fov] * 4)
    ensemble.load_state_dict(torch.load(models_dir / "e_latest.model", weights_only=True), strict=True)
    del large_fov
    refiner = copy.deepcopy(refiner_template)
    refiner.load_state_dict(torch.load(models_dir / "r_latest.model", weights_only=True), strict=True)
    return ensemble.eval(), refiner.eval()


def tmtv_windows(tm, ct: torch.Tensor, suv: torch.Tensor) -> Dict[str, torch.Tensor]:
    case = tm.Preprocessing(internal_type=torch.float32)({"ct": ct.clone(), "suv": suv.clone()})
    return {k: case[k] for k in WINDOWS}


# ------------------------------------------------------------------------------------------- our side
def build_dataset(work: Path, study: Path, roi: str, models_dir: Path, new_models: bool):
    """The study as nnU-Net dataset 997 (``clips-nnunet convert``), planned (nnU-Net's fingerprint and planner,
    ``plan-tmtv``), and TMTV-Net's files imported (``import-tmtv``). Returns the environment and (imagesTr, case)."""
    from clips_nnunet.nnunet_env import NNUNET_FOLDERS, nnunet_environment, run_logged
    env = nnunet_environment(work / "nnunet")
    for name in NNUNET_FOLDERS:
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    env.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"})
    raw = Path(env["nnUNet_raw"]) / f"Dataset{DATASET_ID}_{DATASET_NAME}"
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    steps = []
    if not (raw / "dataset.json").is_file():
        steps.append(["clips-nnunet", "convert", str(study), "-d", str(DATASET_ID), "-n", DATASET_NAME, "--labels",
                      "rtstruct", "--roi", roi, "-j", "1", "--private-dir", str(work / "private")])
    if not (pre / "dataset_fingerprint.json").is_file():
        steps.append(["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", "1"])
    if not (pre / "nnUNetPlans.json").is_file() or STAGE1 not in (pre / "nnUNetPlans.json").read_text():
        steps += [["nnUNetv2_plan_experiment", "-d", str(DATASET_ID)], ["clips-nnunet", "plan-tmtv", "-d", str(DATASET_ID)]]
    results = Path(env["nnUNet_results"]) / raw.name / f"{TRAINER}__nnUNetPlans__{REFINE}" / "fold_all"
    if new_models or not (results / "checkpoint_final.pth").is_file():
        steps.append(["clips-nnunet", "import-tmtv", str(models_dir), "-d", str(DATASET_ID), "--overwrite"])
    log = work / "commands.log"
    for cmd in steps:
        rc = run_logged([console_script(cmd[0]), *cmd[1:]], env, log, echo=True)
        if rc:
            raise SystemExit(f"{cmd[0]} {cmd[1]} failed (exit {rc}); see {log}")
    case = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[0].name[:-len("_0000.nii.gz")]
    return env, (raw / "imagesTr", case)


def console_script(name: str) -> str:
    """``name`` from this interpreter's bin folder, else from the environment nnunetv2 is installed in (this
    script may run in a venv that only adds clips-nnunet's site-packages), else from PATH."""
    import shutil
    import nnunetv2
    for folder in (Path(sys.executable).parent, Path(nnunetv2.__file__).resolve().parents[4] / "bin"):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name) or name


def model_folder(env, configuration: str) -> Path:
    return (Path(env["nnUNet_results"]) / f"Dataset{DATASET_ID}_{DATASET_NAME}"
            / f"{TRAINER}__nnUNetPlans__{configuration}")


def predictor_for(env, configuration: str, folds):
    """nnU-Net's predictor initialised from the imported folder (network rebuilt from plans + checkpoint)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from clips_nnunet.nnunet_env import environment_applied
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    with environment_applied({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}):
        predictor.initialize_from_trained_model_folder(str(model_folder(env, configuration)), use_folds=folds,
                                                       checkpoint_name="checkpoint_final.pth")
    return predictor


def _logits(network, params, x):
    network.load_state_dict(params)
    network.eval()
    with torch.no_grad():
        out = network(x)
    return out[0] if isinstance(out, (list, tuple)) else out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------------------------------- part 1 and 2
def compare_networks(tm, ensemble, refiner, env, seed: int) -> Dict[str, object]:
    from clips_nnunet.tmtv.stacking import foreground_channels, load_stacking_model
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (2, 1, 64, 48, 48)
    ct = -1100 + 1600 * torch.rand(shape, generator=gen)          # HU across every CT window
    suv = 12 * torch.rand(shape, generator=gen) ** 2               # SUV 0-12, most of it low
    previous = torch.rand(shape, generator=gen)                    # a stage-1 foreground probability
    batch = tmtv_windows(tm, ct, suv)
    with torch.no_grad():
        theirs = [m(copy.deepcopy(batch))["seg"].output for m in ensemble.base_models]
        theirs_stack = ensemble(copy.deepcopy(batch))["seg"].output
        theirs_ref = refiner({**batch, "cascade.inference.output_found": previous})["seg"].output

    stage1 = predictor_for(env, STAGE1, (0, 1, 2, 3))
    x = torch.cat([ct, suv], 1)
    ours = [_logits(stage1.network, p, x) for p in stage1.list_of_parameters]
    layer, _, _ = load_stacking_model(model_folder(env, STAGE1) / "stacking_checkpoint_final.pth")
    with torch.no_grad():
        ours_stack = layer(foreground_channels([torch.softmax(o, 1) for o in ours]))
    ref = predictor_for(env, REFINE, ("all",))
    ours_ref = _logits(ref.network, ref.list_of_parameters[0], torch.cat([ct, suv, previous], 1))

    eq = {}
    for j, (a, b) in enumerate(zip(theirs, ours)):
        eq[f"stage-1 U-Net {j}"] = {"max_abs_diff": _max_diff(a, b), "largest_abs_logit": float(a.abs().max())}
    eq["stacking layer (4 models)"] = {"max_abs_diff": _max_diff(theirs_stack, ours_stack),
                                       "largest_abs_logit": float(theirs_stack.abs().max()),
                                       "argmax_differs": int((theirs_stack.argmax(1) != ours_stack.argmax(1)).sum())}
    eq["refiner"] = {"max_abs_diff": _max_diff(theirs_ref, ours_ref), "largest_abs_logit": float(theirs_ref.abs().max()),
                     "argmax_differs": int((theirs_ref.argmax(1) != ours_ref.argmax(1)).sum())}
    eq["stacking layer (4 models)"]["voxels"] = eq["refiner"]["voxels"] = int(np.prod(shape))

    params = {k: v.clone() for k, v in stage1.list_of_parameters[0].items()}
    first = next(k for k, v in params.items() if v.ndim == 5 and tuple(v.shape[2:]) == (3, 3, 3))
    transposed = {**params, first: params[first].transpose(-1, -2).contiguous()}
    planted = {
        f"transposed 3x3x3 kernel ({first}, y<->x)": _max_diff(theirs[0], _logits(stage1.network, transposed, x)),
        "CT and PET channels swapped": _max_diff(theirs[0], _logits(stage1.network, params, torch.cat([suv, ct], 1))),
        "input flipped left-right": _max_diff(theirs[0], _logits(stage1.network, params, x.flip(-1))),
        "input shifted by 1 voxel (z)": _max_diff(theirs[0], _logits(stage1.network, params, torch.roll(x, 1, 2))),
    }
    return {"equivalence": eq, "equivalence_max": max(v["max_abs_diff"] for v in eq.values()),
            "planted": planted, "tolerance": LOGIT_TOLERANCE, "input_shape": list(shape)}


# ------------------------------------------------------------------------------------------- part 3
def tmtv_nifti(dnc, study: Path, out: Path) -> Dict[str, Path]:
    """TMTV-Net's DICOM -> NIfTI (its series choice and SUV) into ``out/PT`` and ``out/CT``, one file each."""
    dirs = dnc.list_of_modality_dirs(str(study))
    folders = {}
    for modality in ("PT", "CT"):
        folder = out / modality
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        dnc.dicomToNifti(dirs[modality], str(folder))
        folders[modality] = folder
    return folders


def _stats(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"mean_abs": float(d.mean()), "p99_abs": float(np.percentile(d, 99)), "max_abs": float(d.max()),
            "pearson_r": r}


def _grid_offset_mm(n_native, s_native, m_new, s_new=6.0):
    """(first, last) offset in mm between nnU-Net's 6 mm voxel centres (skimage-style ``(i + 0.5) * n / m - 0.5``
    in native voxels) and TMTV-Net's (``i * 6 / s``, origin kept), per axis."""
    out = []
    for n, s, m in zip(n_native, s_native, m_new):
        offsets = [(((i + 0.5) * n / m - 0.5) - i * s_new / s) * s for i in (0, m - 1)]
        out.append([round(o, 3) for o in offsets])
    return out


def compare_data_path(tm, env, study: Path, raw_case, work: Path) -> Dict[str, object]:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from clips_nnunet.io_utils import read_json
    tmtv_main, dnc = tmtv_main_modules()
    folders = tmtv_nifti(dnc, study, work / "tmtv_nifti")
    case6 = tmtv_main.load_case(ct_path=str(folders["CT"]), suv_path=str(folders["PT"]), spacing=(6, 6, 6))
    native = tmtv_main.load_case(ct_path=str(folders["CT"]), suv_path=str(folders["PT"]), spacing=None)
    theirs = {k: v.numpy() for k, v in tmtv_windows(tm, case6["ct"], case6["suv"]).items()}

    images, case = raw_case
    files = [str(images / f"{case}_000{c}.nii.gz") for c in (0, 1)]
    pre = Path(env["nnUNet_preprocessed"]) / images.parent.name
    plans = PlansManager(read_json(pre / "nnUNetPlans.json"))
    conf = plans.get_configuration(STAGE1)
    data, _, props = DefaultPreprocessor(verbose=False).run_case(files, None, plans, conf,
                                                                 read_json(pre / "dataset.json"))
    windowing = predictor_for(env, STAGE1, (0,)).network.windowing
    identity = list(plans.transposed_forward if hasattr(plans, "transposed_forward") else plans.transpose_forward)

    def ours_windows(array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            w = windowing(torch.from_numpy(np.ascontiguousarray(array))[None].float())[0].numpy()
        back = [identity.index(i) for i in range(3)]           # nnU-Net's transpose_backward
        return w.transpose([0, *[b + 1 for b in back]])

    ours = ours_windows(data)
    shape = tuple(theirs["ct"].shape)
    bbox = [list(map(int, b)) for b in props["bbox_used_for_cropping"]]
    full = [[0, int(n)] for n in props["shape_before_cropping"]]
    if ours.shape[1:] != shape:
        raise SystemExit(f"6 mm grids differ: TMTV-Net {shape}, nnU-Net {ours.shape[1:]} (crop {bbox} of {full})")
    windows = {name: _stats(theirs[name], ours[i]) for i, name in enumerate(WINDOWS)}
    mean_all = float(np.mean([w["mean_abs"] for w in windows.values()]))
    stacked = np.stack([theirs[n] for n in WINDOWS])

    def planted_diff(array: np.ndarray) -> float:
        return float(np.abs(stacked - array).mean())
    planted = {"ours flipped left-right": planted_diff(ours[:, :, :, ::-1]),
               "ours flipped head-feet": planted_diff(ours[:, ::-1]),
               "ours shifted by one 6 mm voxel (z)": planted_diff(np.roll(ours, 1, axis=1)),
               "ours shifted by one 6 mm voxel (x)": planted_diff(np.roll(ours, 1, axis=3)),
               "CT and PET swapped before windowing": planted_diff(ours_windows(data[::-1].copy()))}

    suv_ours = sitk.GetArrayFromImage(sitk.ReadImage(files[1]))
    ct_ours = sitk.GetArrayFromImage(sitk.ReadImage(files[0]))
    suv_t, ct_t = native["suv"].numpy(), native["ct"].numpy()
    hot = suv_t > 0.5
    native_spacing = np.asarray(native["original_spacing"], dtype=float)[::-1]      # (z, y, x)
    return {"shape_zyx": list(shape), "windows": windows, "mean_abs_all": mean_all,
            "tolerance": 2 * mean_all, "planted": planted, "nnunet_bbox": bbox, "image_shape": full,
            "transpose_forward": identity,
            "grid_offset_mm_zyx": _grid_offset_mm(suv_t.shape, native_spacing, shape),
            "native_spacing_zyx": native_spacing.tolist(),
            "suv_native": {"ratio_median": float(np.median(suv_ours[hot] / suv_t[hot])),
                           "max_rel_diff": float(np.abs(suv_ours[hot] / suv_t[hot] - 1).max())},
            "ct_native_max_abs_hu": float(np.abs(ct_ours - ct_t).max())}


# ------------------------------------------------------------------------------------------- part 4
def _crop_region(image: sitk.Image, centre_zyx, crop_zyx):
    size_zyx = np.asarray(image.GetSize()[::-1])
    crop = np.minimum(np.asarray(crop_zyx), size_zyx)
    start = np.clip(np.asarray(centre_zyx) - crop // 2, 0, size_zyx - crop)
    return [int(v) for v in crop[::-1]], [int(v) for v in start[::-1]]     # (x, y, z) size and index


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def compare_final_mask(tm, ensemble, refiner, env, raw_case, work: Path, crop) -> Dict[str, object]:
    """Both whole pipelines on the same crop of the study (native PET grid, ``crop`` voxels around the label)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401  (predictor_for builds it)
    from clips_nnunet.tmtv.stacking import enable_stacking, load_stacking_model
    tmtv_main, _ = tmtv_main_modules()
    images, case = raw_case
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(images.parent / "labelsTr" / f"{case}.nii.gz")))
    centre = np.round(np.argwhere(label > 0).mean(0)).astype(int)
    ours_pet = sitk.ReadImage(str(images / f"{case}_0001.nii.gz"))
    size, index = _crop_region(ours_pet, centre, crop)

    theirs_in = work / "crop_tmtv"
    for modality in ("PT", "CT"):
        (theirs_in / modality).mkdir(parents=True, exist_ok=True)
        for old in (theirs_in / modality).iterdir():
            old.unlink()
    pet_t = sitk.ReadImage(str(next((work / "tmtv_nifti" / "PT").glob("*.nii.gz"))))
    sitk.WriteImage(sitk.RegionOfInterest(pet_t, size, index), str(theirs_in / "PT" / "crop_PT.nii.gz"))
    ct_t = next((work / "tmtv_nifti" / "CT").glob("*.nii.gz"))      # TMTV-Net resamples it onto the PET crop
    (theirs_in / "CT" / ct_t.name).write_bytes(ct_t.read_bytes())
    out_t = work / "crop_tmtv_out"
    out_t.mkdir(exist_ok=True)
    with torch.no_grad():
        seg_t, _ = tmtv_main.inference_fn(str(theirs_in / "CT"), str(theirs_in / "PT"), "crop", str(out_t) + "/",
                                          ensemble, refiner)
    mask_t = sitk.GetArrayFromImage(seg_t) > 0

    ours_in, s1_out, out_o = work / "crop_ours", work / "crop_ours_s1", work / "crop_ours_out"
    for folder in (ours_in, s1_out, out_o):
        folder.mkdir(exist_ok=True)
    for c in (0, 1):
        img = sitk.ReadImage(str(images / f"{case}_000{c}.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(img, size, index), str(ours_in / f"crop_000{c}.nii.gz"))
    files = [[str(ours_in / "crop_0000.nii.gz"), str(ours_in / "crop_0001.nii.gz")]]
    stage1 = predictor_for(env, STAGE1, (0, 1, 2, 3))
    layer, _, _ = load_stacking_model(model_folder(env, STAGE1) / "stacking_checkpoint_final.pth")
    enable_stacking(stage1, layer)
    stage1.predict_from_files_sequential(files, [str(s1_out / "crop")], save_probabilities=False, overwrite=True,
                                         folder_with_segs_from_prev_stage=None)
    ref = predictor_for(env, REFINE, ("all",))
    ref.predict_from_files_sequential(files, [str(out_o / "crop")], save_probabilities=False, overwrite=True,
                                      folder_with_segs_from_prev_stage=str(s1_out))
    mask_o = sitk.GetArrayFromImage(sitk.ReadImage(str(out_o / "crop.nii.gz"))) > 0
    s1_o = sitk.GetArrayFromImage(sitk.ReadImage(str(s1_out / "crop.nii.gz"))) > 0
    if mask_t.shape != mask_o.shape:
        raise SystemExit(f"final masks differ in shape: TMTV-Net {mask_t.shape}, ours {mask_o.shape}")
    return {"crop_zyx": list(mask_o.shape), "voxels": int(mask_o.size),
            "foreground_tmtv": f"{mask_t.mean():.4f}", "foreground_ours": f"{mask_o.mean():.4f}",
            "stage1_foreground_ours": f"{s1_o.mean():.4f}",
            "voxel_agreement": f"{(mask_t == mask_o).mean():.4f}", "dice": f"{_dice(mask_t, mask_o):.4f}"}


def _table(title: str, rows, header) -> str:
    lines = [f"\n## {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tmtv-repo", required=True, type=Path, help="checkout of qurit-frizi/TMTV-Net")
    parser.add_argument("--study", type=Path, default=REPO_ROOT.parent / "shared" / "testdata" / "tcia_sts_001",
                        help="one PET/CT DICOM study (PET and CT series, an RTSTRUCT)")
    parser.add_argument("--roi", default="^GTV_Mass$", help="RTSTRUCT ROI that becomes the dataset's label")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_tmtv_equivalence"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=None,
                        help="TMTV-Net's released e_latest.model and r_latest.model instead of random weights")
    parser.add_argument("--final-mask", action="store_true", help="also part 4 (minutes on a CPU)")
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 80, 80], metavar=("Z", "Y", "X"),
                        help="native-grid crop (voxels, centred on the label) for part 4")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    tm = load_tmtv_code(args.tmtv_repo.resolve())
    if args.models is not None:          # the released weights: imported afresh every run
        models_dir, new_models = args.models.resolve(), True
    else:
        models_dir = work / "tmtv_models"
        new_models = make_tmtv_models(tm, models_dir, args.seed)
    import gc
    gc.collect()
    env, raw_case = build_dataset(work, args.study, args.roi, models_dir, new_models)
    ensemble, refiner = load_tmtv_models(tm, models_dir)
    results: Dict[str, object] = {"tmtv_commit": tm.commit, "study": str(args.study), "dataset": DATASET_ID}

    nets = compare_networks(tm, ensemble, refiner, env, args.seed)
    results["networks"] = nets
    rows = [(name, f"{v['max_abs_diff']:.2e}", f"{v['largest_abs_logit']:.2f}", v.get("argmax_differs", ""))
            for name, v in nets["equivalence"].items()]
    print(_table("Networks: TMTV-Net's classes vs import-tmtv + nnU-Net (random weights)", rows,
                 ["network", "max abs logit difference", "largest abs logit", "argmax voxels differing"]))
    tol = nets["tolerance"]
    rows = [(name, f"{v:.2e}", f"{v / nets['equivalence_max']:.0f}x", "caught" if v > tol else "MISSED")
            for name, v in nets["planted"].items()]
    print(_table(f"Planted mismatches on stage-1 model 0 (caught: > {tol:.0e})", rows,
                 ["mismatch", "max abs logit difference", "x equivalence", "verdict"]))

    data = compare_data_path(tm, env, args.study, raw_case, work)
    results["data_path"] = data
    rows = [(w, f"{d['mean_abs']:.4f}", f"{d['p99_abs']:.4f}", f"{d['max_abs']:.3f}", f"{d['pearson_r']:.4f}")
            for w, d in data["windows"].items()]
    print(_table(f"Data path: windows on the 6 mm grid {data['shape_zyx']} (TMTV-Net vs ours; values in [0, 1])",
                 rows, ["window", "mean abs diff", "99th pct", "max", "Pearson r"]))
    print(f"\n6 mm grid offset ours - TMTV-Net (mm, z y x): {data['grid_offset_mm_zyx']}; "
          f"nnU-Net crop bbox {data['nnunet_bbox']}; transpose {data['transpose_forward']}")
    print(f"SUV on the native PET grid: ours / TMTV-Net median {data['suv_native']['ratio_median']:.5f}, "
          f"max rel diff (SUV > 0.5) {data['suv_native']['max_rel_diff']:.2e}; CT on the PET grid max abs diff "
          f"{data['ct_native_max_abs_hu']:.3g} HU")
    rows = [(name, f"{v:.4f}", f"{v / max(data['mean_abs_all'], 1e-12):.1f}x",
             "caught" if v > data["tolerance"] else "MISSED") for name, v in data["planted"].items()]
    print(_table(f"Planted data-path mismatches (mean abs diff over the 5 windows; caught: > "
                 f"{data['tolerance']:.3f})", rows, ["mismatch", "mean abs diff", "x equivalence", "verdict"]))

    if args.final_mask:
        final = compare_final_mask(tm, ensemble, refiner, env, raw_case, work, args.crop)
        results["final_mask"] = final
        print(_table("Final mask on the crop (random weights)", [(k, v) for k, v in final.items()],
                     ["measure", "value"]))
    (work / "equivalence.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwindows compared: {', '.join(WINDOWS)}; all figures in {work / 'equivalence.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
