"""The main job end to end on a synthetic DICOM cohort (``clips-nnunet demo``).

:mod:`~clips_nnunet.demo.pipeline`: options, steps and the run; :mod:`~clips_nnunet.demo.progress`: the training
subprocess with one progress line per epoch; :mod:`~clips_nnunet.demo.check`: the self-check of the result.
"""
from clips_nnunet.demo.check import DICE_THRESHOLD, ModelCheck, check_model
from clips_nnunet.demo.pipeline import (DEFAULT_EPOCHS, DEFAULT_PATIENTS, DEFAULT_PHANTOM, DEMO_TMTV_TRAINER,
                                        DEMO_TRAINER, DemoOptions, DemoStep, demo_budget, demo_environment,
                                        demo_steps, demo_trainer_classes, run_demo, write_demo_trainers)

__all__ = ["DemoOptions", "DemoStep", "run_demo", "demo_budget", "demo_environment", "demo_steps",
           "demo_trainer_classes", "write_demo_trainers", "DEMO_TRAINER", "DEMO_TMTV_TRAINER", "DEFAULT_EPOCHS",
           "DEFAULT_PATIENTS", "DEFAULT_PHANTOM", "DICE_THRESHOLD", "ModelCheck", "check_model"]
