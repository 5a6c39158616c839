"""Options that name trained nnU-Net models, shared by ``predict``, ``score --predict``, ``audit`` and ``compare``.

``--model SPEC`` (repeatable) names one installed nnU-Net model with nnU-Net's own names, fields separated by ``:``
(an empty field keeps the default)::

    DATASET:CONFIGURATION[:TRAINER[:PLANS[:FOLDS[:CHECKPOINT[:CHANNELS]]]]]
    501:3d_fullres                                   nnUNetTrainer, nnUNetPlans, every fold, checkpoint_final.pth
    1:3d_fullres::nnUNetResEncUNetMPlans:0,1,2,3,4   LyROI's residual-encoder (M) model, five folds
    1:3d_fullres::nnUNetPlans_PET                    LyROI's PET-only model (its dataset.json names one channel)

DATASET is the id or name under ``$nnUNet_results`` (a model installed with
``nnUNetv2_install_pretrained_model_from_zip`` lives there too), FOLDS a comma list of fold numbers or ``all``
(default: every fold holding the checkpoint), CHANNELS
the role of each input channel (e.g. ``CT,PET``; only for a model whose ``dataset.json`` channel names are not CT,
PET, SUV or PT). Several models are merged by ``--merge union`` (default, LyROI's
rule: a voxel is lesion where any model predicts one) or ``--merge mean`` (class probabilities averaged).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from clips_nnunet.errors import UsageError

#: Fields of ``--model``, in order
SPEC_FIELDS = ("dataset", "configuration", "trainer", "plans", "folds", "checkpoint", "channels")


def parse_model_spec(text: str, option: str = "--model"):
    """The :class:`clips_nnunet.prediction.models.ModelSpec` of one ``--model`` value; :class:`UsageError` (one
    line naming the value) when it is malformed."""
    from clips_nnunet.prediction.models import ModelSpec

    parts = str(text).split(":")
    if len(parts) < 2 or len(parts) > len(SPEC_FIELDS) or not parts[0].strip() or not parts[1].strip():
        raise UsageError(f"{option} {text!r}: expected DATASET:CONFIGURATION[:TRAINER[:PLANS[:FOLDS[:CHECKPOINT"
                         "[:CHANNELS]]]]] (e.g. 501:3d_fullres or 1:3d_fullres::nnUNetResEncUNetMPlans)")
    values = {k: v.strip() for k, v in zip(SPEC_FIELDS, parts) if v.strip()}
    folds = [f for f in values.pop("folds", "").split(",") if f.strip()] or None
    channels = [c for c in values.pop("channels", "").split(",") if c.strip()] or None
    try:
        return ModelSpec(folds=folds, channels=channels, **values)
    except UsageError as e:
        raise UsageError(f"{option} {text!r}: {e}") from None


def add_model_options(parser: argparse.ArgumentParser, device: bool = False, what: str = "") -> None:
    """Add ``--model SPEC`` (repeatable) and ``--merge`` (and ``--device`` when ``device``) to ``parser``;
    ``what`` says in the help what the models are used for."""
    parser.add_argument("--model", action="append", dest="models", metavar="SPEC", default=None,
                        help="an installed nnU-Net model, DATASET:CONFIGURATION[:TRAINER[:PLANS[:FOLDS"
                             "[:CHECKPOINT[:CHANNELS]]]]] (empty field = default: nnUNetTrainer, nnUNetPlans, every "
                             "fold, checkpoint_final.pth); repeat for an ensemble" + (f"; {what}" if what else ""))
    parser.add_argument("--merge", choices=("union", "mean"), default="union",
                        help="how several models are merged: union of their lesion masks (default, LyROI's rule) "
                             "or mean of their class probabilities")
    if device:
        parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                            help="for --model: auto (default): the GPU when PyTorch sees one, else the CPU")


def models_from_args(args: argparse.Namespace, first: Optional[Sequence] = None):
    """The :class:`ModelSpec` or :class:`clips_nnunet.prediction.ensemble.Ensemble` that ``--model`` (after the
    specs in ``first``, e.g. predict's ``-d/-c``) and ``--merge`` name; None when no model is named."""
    from clips_nnunet.prediction.ensemble import Ensemble

    specs: List = list(first or []) + [parse_model_spec(t) for t in (getattr(args, "models", None) or [])]
    if not specs:
        return None
    merge = getattr(args, "merge", "union")
    if len(specs) == 1:
        return specs[0]
    return Ensemble(specs, merge=merge)


def model_names(model) -> List[str]:
    """``Dataset/Trainer__Plans__Config`` of each model of a spec or ensemble (for console lines)."""
    from clips_nnunet.prediction.ensemble import Ensemble

    specs: Sequence = model.models if isinstance(model, Ensemble) else [model]
    return [s.name for s in specs]



def model_prediction_set(args: argparse.Namespace, out_dir, validation_layout: bool) -> Optional[Tuple[str, Path]]:
    """With ``--model`` (``audit``, ``compare``): the model or ensemble predicts every case of ``--images`` that has
    a reference in ``--gt`` into ``out_dir/model_predictions/<model>/`` (with ``validation_layout``:
    ``.../fold_all/validation/``, the layout ``audit`` reads), without test-time mirroring. Returns ``(<model>,
    folder to read)``, or None without ``--model``. A model trained elsewhere never saw these cases, so its
    predictions are held out like out-of-fold ones."""
    from clips_nnunet.prediction.ensemble import model_label, predict_reference_cases

    model = models_from_args(args)
    if model is None:
        return None
    if not getattr(args, "images", None) or not getattr(args, "gt", None):
        raise UsageError("--model predicts the cases of --images that have a reference in --gt: give both")
    label = model_label(model)
    folder = Path(out_dir) / "model_predictions" / label
    predict_reference_cases(model, args.images, args.gt, folder, device=args.device,
                            validation_layout=validation_layout, progress=False)
    return label, folder / "fold_all" / "validation" if validation_layout else folder
