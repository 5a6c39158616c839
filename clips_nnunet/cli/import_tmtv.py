"""``clips-nnunet import-tmtv``: TMTV-Net's released weights as nnU-Net results folders (docs/tmtv_import.md)."""
from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from clips_nnunet.tmtv.release import import_tmtv

    result = import_tmtv(args.models_dir, args.d, plans_identifier=args.p, trainer=args.tr, overwrite=args.overwrite)
    d, tr, p = args.d, args.tr, args.p
    if result.stage1_folder:
        folds = " ".join(map(str, result.stage1_folds))
        print(f"stage 1: {len(result.stage1_folds)} fold model(s) -> {result.stage1_folder}")
        if result.stacking_file:
            print(f"stacking layer -> {result.stacking_file}")
        print(f"predict stage 1: nnUNetv2_predict -i IMAGES -o OUT -d {d} -c 3d_tmtv -tr {tr} -p {p} -f {folds}")
    if result.refiner_folder:
        print(f"refiner -> {result.refiner_folder}")
        print(f"then the refiner: nnUNetv2_predict -i IMAGES -o OUT2 -d {d} -c 3d_tmtv_refine -tr {tr} -p {p} -f all "
              "-prev_stage_predictions OUT")
    if result.stage1_folder and result.refiner_folder:
        stacking = f" --stacking {result.stacking_file}" if result.stacking_file else ""
        print(f"DICOM patients, both stages{' and the stacking' if stacking else ''}: clips-nnunet predict DICOM_DIR "
              f"-o OUT -d {d} -c 3d_tmtv_refine -tr {tr} -p {p}{stacking}")
    print(f"imported {result.n_tensors} tensors into {result.dataset_name}")
    return 0


def register(subparsers) -> None:
    """Add ``import-tmtv``."""
    p = subparsers.add_parser(
        "import-tmtv", help="import TMTV-Net's released models (stage-1 ensemble, stacking, refiner) into nnU-Net",
        description="Reads TMTV-Net's released model files in MODELS_DIR (e_latest.model: the stage-1 ensemble "
                    "with its linear stacking layer; r_latest.model: the refiner; *.model/*.pth/*.pt), maps every "
                    "tensor onto clips-nnunet's TMTV networks built from the dataset's plans (3d_tmtv and "
                    "3d_tmtv_refine from clips-nnunet plan-tmtv) and writes nnU-Net results folders: "
                    "TRAINER__PLANS__3d_tmtv/fold_0..3 + stacking_checkpoint_final.pth and "
                    "TRAINER__PLANS__3d_tmtv_refine/fold_all, each with plans.json and dataset.json. A missing, "
                    "extra or mis-shaped tensor stops the import before anything is written (exit code 2).")
    p.add_argument("models_dir", metavar="MODELS_DIR", help="folder with TMTV-Net's .model files")
    p.add_argument("-d", required=True, metavar="DATASET",
                   help="nnU-Net dataset id or name whose plans (clips-nnunet plan-tmtv) the model is imported into")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default="nnUNetTrainerTMTV", metavar="TRAINER",
                   help="trainer name of the written results folders (default nnUNetTrainerTMTV)")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints of these folders")
    p.set_defaults(func=run)
