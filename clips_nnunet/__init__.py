"""clips-nnunet: curriculum learning and the TMTV-Net recipe for nnU-Net v2 (lymphoma PET/CT, TMTV)."""

__version__ = "0.1.0"
