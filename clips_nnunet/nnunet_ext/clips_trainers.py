"""Shim for nnU-Net's trainer lookup (nnUNet_extTrainer): imports only; the classes live in clips_nnunet."""
from clips_nnunet.trainers.tmtv.recipe import nnUNetTrainerTMTV, nnUNetTrainerTMTVRefiner  # noqa: F401
from clips_nnunet.trainers.tmtv.combinations import *  # noqa: F401,F403  (nnUNetTrainerTMTVCL<Method>)
