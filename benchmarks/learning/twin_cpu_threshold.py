"""The best global SUV threshold on a twin study's own split: the yardstick the trained arms are read against.

For a study made by the synthetic twin generator (``dataset.source: synthetic_raw``, ``phantom: twin``), the threshold
is chosen on the training patients of the fold (highest mean Dice over ``twin_ceiling.THRESHOLDS``) against the
clean masks, and also against the masks the arms trained on (the sloppy annotator's, where planted), and scored on
the fold's out-of-fold patients against the clean masks (mean over patients with a lesion, as the study report's
Dice). Plain PET, no organ masking (the networks get no tissue map either).

    python benchmarks/learning/twin_cpu_threshold.py benchmarks/learning/twin_cpu_sloppy.yaml [--fold 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from clips_nnunet.io_utils import read_json
from clips_nnunet.study import load_study_config
from clips_nnunet.synthetic.raw import truth_dir
from clips_nnunet.synthetic.twin_ceiling import THRESHOLDS, dice_curve


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def curves(pets: Dict[str, np.ndarray], labels: Dict[str, np.ndarray], cases: Sequence[str]) -> np.ndarray:
    """Dice curve over the thresholds of each case with a lesion (rows)."""
    return np.array([dice_curve(pets[c], labels[c] > 0) for c in cases if labels[c].any()])


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args(list(argv) or None)
    config = load_study_config(args.config)
    raw = config.study_dir / "nnUNet_raw" / config.dataset_folder_name
    clean_dir = truth_dir(config.study_dir / "nnUNet_raw", config.dataset_id, config.dataset_name) / "labels_clean"
    split = read_json(config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name
                      / "splits_final.json")[args.fold]
    cases: List[str] = sorted(split["train"] + split["val"])
    pets = {c: _read(raw / "imagesTr" / f"{c}_0001.nii.gz") for c in cases}
    clean = {c: _read(clean_dir / f"{c}.nii.gz") for c in cases}
    trained = {c: _read(raw / "labelsTr" / f"{c}.nii.gz") for c in cases}
    test = curves(pets, clean, split["val"])
    for name, labels in (("clean masks", clean), ("annotated masks (what the arms trained on)", trained)):
        train = curves(pets, labels, split["train"])
        best = int(np.argmax(train.mean(axis=0)))
        print(f"threshold chosen on the {len(split['train'])} training patients' {name}: SUV {THRESHOLDS[best]:.2f} "
              f"(training Dice {train.mean(axis=0)[best]:.3f}); out-of-fold Dice against the clean masks "
              f"{test[:, best].mean():.3f} over {len(test)} patients with a lesion")
    print(f"oracle (best threshold for the out-of-fold patients themselves): {test.mean(axis=0).max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
