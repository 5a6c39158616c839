"""Draw docs/architecture.png: the layers of clips_nnunet (left) and the data flow of the main job (right).

Run from the repository root: ``python docs/make_architecture_figure.py`` (matplotlib only, deterministic).
The layer table is the one tests/test_architecture.py enforces; keep the two in step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

#: (layer, [(package, one-line role)]) bottom to top; mirrors LAYERS in tests/test_architecture.py.
LAYERS = [
    (0, [("errors", "exceptions, exit codes"), ("io_utils", "verified atomic writes, JSON, locks")]),
    (1, [("curriculum", "difficulty, pacing, schedulers (numpy)"), ("metrics", "one Dice, lesions, TMTV"),
         ("nnunet_env", "nnUNet_* folders, device, runner")]),
    (2, [("trainers", "nnUNetTrainer subclasses,\ncurriculum engine"), ("dataset_conversion", "DICOM -> nnU-Net raw")]),
    (3, [("tmtv", "TMTV-Net: recipe, weights,\nrelease import, stacking"), ("synthetic", "synthetic cohorts")]),
    (4, [("prediction", "DICOM in: masks, SEG,\nRTSTRUCT, report, MIP"), ("evaluation", "evaluate, compare,\nstatistics, scoring")]),
    (5, [("audit", "suspect reference masks"), ("study", "arms x seeds, report"), ("demo", "small end-to-end run")]),
    (6, [("cli", "clips-nnunet commands"), ("nnunet_ext", "trainer discovery shim"), ("__main__", "python -m")]),
]
LAYER_COLOURS = ["#e8e8e8", "#d8ecd5", "#d5e3f0", "#e3ddf3", "#f4e4c9", "#ead6ee", "#f2d4d4"]

#: Main job, top to bottom: (step, command, package(s), product).
FLOW = [
    ("synthesise", "clips-nnunet synth", "synthetic", "DICOM PET/CT cohort (or your own DICOM)"),
    ("convert", "clips-nnunet convert", "dataset_conversion, metrics",
     "nnUNet_raw/DatasetXXX: images, labels,\ndataset.json, case_metadata.json"),
    ("plan", "nnUNetv2_plan_and_preprocess\n(+ clips-nnunet plan-tmtv)", "nnU-Net, tmtv.plans", "nnUNet_preprocessed"),
    ("score teacher", "clips-nnunet score", "evaluation.scoring, curriculum.difficulty",
     "difficulty.csv (out-of-fold 1 - Dice)"),
    ("train", "nnUNetv2_train -tr nnUNetTrainerCL...", "trainers + curriculum (via nnunet_ext)",
     "nnUNet_results/.../fold_X: checkpoints,\nvalidation, curriculum history"),
    ("predict", "clips-nnunet predict", "prediction.predict", "masks, DICOM SEG / RTSTRUCT, MIP"),
    ("evaluate, compare,\naudit", "clips-nnunet evaluate / compare / audit", "evaluation, audit",
     "per_case.csv, tests.csv, report.md"),
]


def draw(path: Path) -> Path:
    fig = plt.figure(figsize=(15, 8.2))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 8.2)
    ax.axis("off")

    # ---- left: layers, bottom (0) to top (6)
    ax.text(0.2, 7.85, "Layers: a package imports only its own layer or lower ones; only cli imports cli",
            fontsize=10.5, weight="bold", va="center")
    band_h, gap, x0, width = 0.95, 0.1, 0.2, 7.2
    for layer, packages in LAYERS:
        y = 0.2 + layer * (band_h + gap)
        ax.add_patch(FancyBboxPatch((x0, y), width, band_h, boxstyle="round,pad=0.0,rounding_size=0.08",
                                    facecolor=LAYER_COLOURS[layer], edgecolor="#888888", linewidth=0.8))
        ax.text(x0 + 0.12, y + band_h / 2, f"{layer}", fontsize=16, weight="bold", va="center", color="#555555")
        box_w = (width - 0.6 - 0.15 * (len(packages) - 1)) / len(packages)
        for i, (name, role) in enumerate(packages):
            bx = x0 + 0.5 + i * (box_w + 0.15)
            ax.add_patch(FancyBboxPatch((bx, y + 0.1), box_w, band_h - 0.2,
                                        boxstyle="round,pad=0.0,rounding_size=0.06", facecolor="white",
                                        edgecolor="#444444", linewidth=0.8))
            ax.text(bx + box_w / 2, y + band_h - 0.3, name, fontsize=9.5, weight="bold", ha="center", va="center",
                    family="monospace")
            ax.text(bx + box_w / 2, y + 0.38, role, fontsize=7.5, ha="center", va="center", color="#333333")
    ax.add_patch(FancyArrowPatch((x0 + width + 0.25, 6.9), (x0 + width + 0.25, 0.4), arrowstyle="-|>",
                                 mutation_scale=14, color="#666666", linewidth=1.2))
    ax.text(x0 + width + 0.38, 3.6, "imports point down", rotation=90, fontsize=8.5, va="center", color="#555555")

    # ---- right: data flow of the main job
    fx, fw = 8.3, 6.5
    ax.text(fx, 7.85, "Main job (clips-nnunet study: steps 3-5 and compare for every arm and seed)", fontsize=10.5,
            weight="bold", va="center")
    step_h = 0.86
    for i, (step, command, packages, product) in enumerate(FLOW):
        y = 7.25 - (i + 1) * (step_h + 0.14) + 0.14
        ax.add_patch(FancyBboxPatch((fx, y), fw, step_h, boxstyle="round,pad=0.0,rounding_size=0.06",
                                    facecolor="#f7f7f7", edgecolor="#444444", linewidth=0.8))
        ax.text(fx + 0.1, y + step_h / 2, f"{i + 1}. {step}", fontsize=9, weight="bold", va="center")
        ax.text(fx + 1.55, y + step_h - 0.2, command, fontsize=7.8, va="top", family="monospace")
        ax.text(fx + 1.55, y + 0.1, packages, fontsize=7.5, va="bottom", color="#1f4e79", style="italic")
        ax.text(fx + fw - 0.1, y + step_h / 2, product, fontsize=7.5, va="center", ha="right", color="#333333")
        if i:
            ax.add_patch(FancyArrowPatch((fx + 0.6, y + step_h + 0.14), (fx + 0.6, y + step_h), arrowstyle="-|>",
                                         mutation_scale=9, color="#444444", linewidth=1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "architecture.png"
    print(draw(out))
