"""DICOM / NIfTI PET/CT -> nnU-Net raw datasets, in four stages: index -> select -> read -> write."""
