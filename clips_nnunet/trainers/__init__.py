"""The thin nnU-Net layer: curriculum trainers and the TMTV-Net recipe trainers."""
