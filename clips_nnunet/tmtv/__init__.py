"""TMTV-Net (Yousefirizi et al., EJNMMI 2024; qurit-frizi/TMTV-Net) inside nnU-Net: one package for the whole model.

- the recipe as nnU-Net plans and trainers: ``plans`` (``plan-tmtv``), ``network`` (windowing layer, stage-1 U-Net,
  refiner), ``loss``, ``augmentation``, ``schedule``, ``recipe`` (``TMTVRecipe``, ``nnUNetTrainerTMTV``,
  ``nnUNetTrainerTMTVFinetune``, ``nnUNetTrainerTMTVRefiner``) and ``cl_trainers`` (``nnUNetTrainerTMTVCL<Method>``,
  the recipe with every curriculum, written out);
- the learned stacking ensemble, trained (``clips-nnunet stack``) and applied (``predict --stacking``): ``stacking``;
- the released weights: ``weights`` (TMTV-Net's keys -> ours) and ``release`` (``clips-nnunet import-tmtv``: the
  released model as nnU-Net results folders).
"""
