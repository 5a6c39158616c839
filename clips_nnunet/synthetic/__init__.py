"""Synthetic cohorts with known truth, for tests, the demo and studies.

- :mod:`clips_nnunet.synthetic.dicom_cohort`: PET/CT DICOM patients (Siemens/GE/Philips SUV conventions, SEG and
  RTSTRUCT masks, planted faults), written as the converter reads them.
- :mod:`clips_nnunet.synthetic.raw`: a tiny 2-channel nnU-Net raw dataset, written directly.

The truth (clean masks, SUV, planted faults) is kept beside the data, never inside an nnU-Net dataset.
"""
