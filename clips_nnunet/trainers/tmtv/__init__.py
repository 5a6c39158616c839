"""TMTV-Net's recipe (qurit-frizi/TMTV-Net) as nnU-Net plans and trainers, combinable with every curriculum.

Modules: ``network`` (windowing layer, stage-1 U-Net, refiner), ``loss``, ``augmentation``, ``schedule``,
``plans`` (``plan-tmtv``), ``recipe`` (``TMTVRecipe``, ``nnUNetTrainerTMTV``, ``nnUNetTrainerTMTVRefiner``) and
``combinations`` (``nnUNetTrainerTMTVCL<Method>`` for every curriculum trainer).
"""
