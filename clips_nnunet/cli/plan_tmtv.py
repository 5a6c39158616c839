"""``clips-nnunet plan-tmtv``: TMTV-Net's configurations (3d_tmtv, 3d_tmtv_refine) in nnU-Net plans."""
from __future__ import annotations

import argparse


def run_plan_tmtv(args: argparse.Namespace) -> int:
    from clips_nnunet.tmtv.plans import REFINE, STAGE1, find_preprocessed_dataset_folder, plan_tmtv

    folder = find_preprocessed_dataset_folder(args.dataset)
    plans_file = plan_tmtv(folder, args.plans, clamp_patch_to_median=args.clamp_patch_to_median)
    print(f"added {STAGE1} and {REFINE} to {plans_file}")
    print(f"next: nnUNetv2_preprocess -d {args.dataset} -plans_name {args.plans} -c {STAGE1} {REFINE}")
    print(f"then: nnUNetv2_train {args.dataset} {STAGE1} FOLD -tr nnUNetTrainerTMTV -p {args.plans}")
    return 0


def register(subparsers) -> None:
    """Add ``plan-tmtv``."""
    p = subparsers.add_parser(
        "plan-tmtv", help="add TMTV-Net's 3d_tmtv (6 mm) and 3d_tmtv_refine (3d_fullres spacing, cascade) configurations",
        description="Adds two configurations to $nnUNet_preprocessed/DatasetXXX/<plans>.json (atomic, other "
                    "configurations kept): 3d_tmtv (6 mm isotropic, patch 128x96x96, NoNormalization: the "
                    "windowing is the network's first layer; next_stage 3d_tmtv_refine) and 3d_tmtv_refine (the "
                    "spacing of 3d_fullres, patch 96^3, batch 8, previous_stage 3d_tmtv). Run nnUNetv2_plan_experiment "
                    "first, then nnUNetv2_preprocess -c 3d_tmtv 3d_tmtv_refine.")
    p.add_argument("-d", "--dataset", type=int, required=True, help="nnU-Net dataset id, e.g. 501")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("--clamp-patch-to-median", action="store_true",
                   help="shrink each patch axis to the median image size (stage 1: a multiple of 8, at least 24; "
                        "refiner: the median size); for small images such as test data, where a 128x96x96 patch "
                        "would be mostly padding")
    p.set_defaults(func=run_plan_tmtv)
