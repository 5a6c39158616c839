"""DICOM / NIfTI PET/CT -> nnU-Net raw datasets, in four stages: index -> select -> read -> write.

Also the synthetic PET/CT DICOM cohort generator (``synthetic``), which writes the same DICOM the reader reads.
"""
