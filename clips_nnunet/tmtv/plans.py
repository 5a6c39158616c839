"""``plan-tmtv``: add TMTV-Net's two configurations to a dataset's nnU-Net plans.

- ``3d_tmtv``: stage 1, 6 mm isotropic, patch 128x96x96 (z, y, x), ``NoNormalization`` (raw HU / SUV are stored;
  the windowing is the network's first layer), architecture ``TMTVUNet``, ``next_stage`` ``3d_tmtv_refine``.
- ``3d_tmtv_refine``: stage 2, the spacing of ``3d_fullres`` (nnU-Net's median spacing of the cohort; TMTV-Net
  keeps each case's native grid, which an nnU-Net configuration cannot: it has one spacing), patch 96^3, batch 8
  (TMTV-Net's refiner batch), ``NoNormalization``, architecture ``TMTVRefiner``, ``previous_stage`` ``3d_tmtv``:
  nnU-Net's cascade carries stage-1 predictions (one-hot) into the refiner's input.

Both inherit everything else (resampling, stage-1 batch size, preprocessor) from ``3d_fullres``. Other configurations are
kept. The channel roles (CT, PET) come from ``dataset.json`` and are written into the architecture keywords.

Small data: a patch larger than the image only wastes padding (nnU-Net pads), but on tiny test data (32^3 at 4 mm,
i.e. ~21^3 at 6 mm) it dominates; ``clamp_patch_to_median=True`` shrinks each patch axis to the median image size:
stage 1 to the largest multiple of 8 not above it (deep-supervision targets at strides 2, 4, 8 must match the
outputs), but at least 24 (the smallest patch whose 1/16 bottleneck keeps > 1 voxel for InstanceNorm), so a 21^3
image gets a 24^3 patch (padded by 3 voxels); the refiner (no downsampling) to the median size itself.
"""
from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from clips_nnunet.dataset_conversion.channels import channel_roles
from clips_nnunet.errors import DatasetError
from clips_nnunet.nnunet_env import dataset_folder
from clips_nnunet.io_utils import atomic_write_json, read_json

STAGE1 = "3d_tmtv"
REFINE = "3d_tmtv_refine"
STAGE1_SPACING = (6.0, 6.0, 6.0)
STAGE1_PATCH = (128, 96, 96)
REFINE_PATCH = (96, 96, 96)
REFINE_BATCH = 8  # TMTV-Net's refiner batch (with 2-step gradient accumulation in the trainer)
STAGE1_MULTIPLE = 8   # deep-supervision targets at strides 1..8 must match the outputs exactly
STAGE1_MIN_PATCH = 24  # 24 -> 12 -> 6 -> 3 -> 2: InstanceNorm needs > 1 voxel at the 1/16 bottleneck
UNET_CLASS = "clips_nnunet.tmtv.network.TMTVUNet"
REFINER_CLASS = "clips_nnunet.tmtv.network.TMTVRefiner"

def detect_channels(channel_names: Dict[str, str]) -> Tuple[int, int]:
    """(ct_channel, pet_channel) from dataset.json's ``channel_names``
    (:func:`clips_nnunet.dataset_conversion.channels.channel_roles`: the converter's CT/CT pair is CT, then PET).

    Raises :class:`DatasetError` in one line unless the names tell exactly one CT and one PET channel.
    """
    roles = channel_roles(channel_names, "the dataset", hint="TMTV-Net needs one CT and one PET channel; convert the "
                          "data with clips-nnunet convert or name the channels CT and PET in dataset.json")
    if sorted(roles) != ["CT", "PET"]:
        raise DatasetError(f"the dataset has the channels {roles}; TMTV-Net needs one CT and one PET channel "
                           "(convert the data with clips-nnunet convert)")
    return roles.index("CT"), roles.index("PET")


def clamp_patch(patch: Sequence[int], median: Sequence[float], multiple: int, minimum: int) -> List[int]:
    """Each axis: ``min(patch, max(minimum, largest multiple of `multiple` <= median))``."""
    out = []
    for p, m in zip(patch, median):
        fit = max(int(minimum), int(math.floor(float(m) / multiple)) * multiple)
        out.append(int(min(int(p), fit)))
    return out


def add_tmtv_configurations(plans: dict, dataset_json: dict, clamp_patch_to_median: bool = False,
                            stage1_spacing: Sequence[float] = STAGE1_SPACING,
                            stage1_patch: Sequence[int] = STAGE1_PATCH,
                            refine_patch: Sequence[int] = REFINE_PATCH) -> dict:
    """Return a copy of ``plans`` with ``3d_tmtv`` and ``3d_tmtv_refine`` added (replaced if present)."""
    if "configurations" not in plans or "3d_fullres" not in plans["configurations"]:
        raise DatasetError("the plans have no 3d_fullres configuration; run nnUNetv2_plan_experiment -d ID first "
                           "(the TMTV configurations inherit resampling and batch size from 3d_fullres)")
    if len(stage1_spacing) != 3 or any(float(s) <= 0 for s in stage1_spacing):
        raise ValueError(f"stage1_spacing must be 3 positive numbers (mm), got {stage1_spacing}")
    for name, patch, div, low in (("stage1_patch", stage1_patch, STAGE1_MULTIPLE, STAGE1_MIN_PATCH),
                                  ("refine_patch", refine_patch, 1, 1)):
        if len(patch) != 3 or any(int(p) < low or int(p) % div for p in patch):
            raise ValueError(f"{name} must be 3 multiples of {div} of at least {low}, got {patch}")
    ct, pet = detect_channels(dataset_json.get("channel_names", dataset_json.get("modality")))
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality")))
    plans = deepcopy(plans)
    fullres = plans["configurations"]["3d_fullres"]
    if "inherits_from" in fullres:
        raise DatasetError("3d_fullres inherits from another configuration; plan-tmtv needs a plain 3d_fullres")
    native_spacing = [float(s) for s in fullres["spacing"]]
    native_median = [float(s) for s in fullres["median_image_size_in_voxels"]]
    stage1_median = [m * s / float(t) for m, s, t in zip(native_median, native_spacing, stage1_spacing)]
    s1_patch = [int(p) for p in stage1_patch]
    r_patch = [int(p) for p in refine_patch]
    if clamp_patch_to_median:
        s1_patch = clamp_patch(s1_patch, stage1_median, STAGE1_MULTIPLE, STAGE1_MIN_PATCH)
        r_patch = clamp_patch(r_patch, native_median, 1, 1)
    plans_name = plans.get("plans_name", "nnUNetPlans")
    channels = {"ct_channel": ct, "pet_channel": pet}
    no_norm = ["NoNormalization"] * n_channels
    no_mask = [False] * n_channels
    plans["configurations"][STAGE1] = {
        "inherits_from": "3d_fullres",
        "data_identifier": f"{plans_name}_{STAGE1}",
        "spacing": [float(s) for s in stage1_spacing],
        "median_image_size_in_voxels": [round(m, 2) for m in stage1_median],
        "patch_size": s1_patch,
        "normalization_schemes": no_norm,
        "use_mask_for_norm": no_mask,
        "batch_dice": False,
        "next_stage": REFINE,
        "architecture": {
            "network_class_name": UNET_CLASS,
            "arch_kwargs": {**channels, "features_per_stage": [32, 64, 96, 128, 156], "bottleneck_kernel": 9,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4},
            "_kw_requires_import": [],
        },
    }
    plans["configurations"][REFINE] = {
        "inherits_from": "3d_fullres",
        "data_identifier": f"{plans_name}_{REFINE}",
        "patch_size": r_patch,
        "batch_size": REFINE_BATCH,
        "normalization_schemes": no_norm,
        "use_mask_for_norm": no_mask,
        "batch_dice": False,
        "previous_stage": STAGE1,
        "architecture": {
            "network_class_name": REFINER_CLASS,
            "arch_kwargs": {**channels, "features": 32, "n_blocks": 4, "first_kernel": 9, "strides": [[1, 1, 1]]},
            "_kw_requires_import": [],
        },
    }
    return plans


def plan_tmtv(preprocessed_dataset_folder: Path, plans_identifier: str = "nnUNetPlans",
              clamp_patch_to_median: bool = False) -> Path:
    """Add the TMTV configurations to ``<folder>/<plans_identifier>.json`` in place (atomic) and return its path.

    ``preprocessed_dataset_folder`` is ``$nnUNet_preprocessed/DatasetXXX_Name`` (holding dataset.json and the
    plans written by ``nnUNetv2_plan_experiment``). Re-running replaces the TMTV configurations only.
    """
    folder = Path(preprocessed_dataset_folder)
    plans_file = folder / f"{plans_identifier}.json"
    dataset_file = folder / "dataset.json"
    for f in (plans_file, dataset_file):
        if not f.is_file():
            raise DatasetError(f"{f} not found; run nnUNetv2_plan_experiment -d ID -pl ... (or "
                               f"nnUNetv2_plan_and_preprocess) for this dataset first")
    plans = add_tmtv_configurations(read_json(plans_file), read_json(dataset_file), clamp_patch_to_median)
    atomic_write_json(plans_file, plans)
    return plans_file


def find_preprocessed_dataset_folder(dataset_id: int) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_*`` for ``dataset_id`` (:func:`clips_nnunet.nnunet_env.dataset_folder`),
    with the planning step named when there is none."""
    try:
        return dataset_folder("nnUNet_preprocessed", dataset_id)
    except DatasetError as e:
        if "found none" not in str(e):
            raise
        raise DatasetError(f"{e}; run nnUNetv2_plan_experiment -d {dataset_id} first") from None
