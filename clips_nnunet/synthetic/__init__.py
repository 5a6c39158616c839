"""Synthetic cohorts with known truth, for tests, the demo and studies (docs/synthetic.md).

- :mod:`clips_nnunet.synthetic.dicom_cohort`: PET/CT DICOM patients (Siemens/GE/Philips SUV conventions, SEG and
  RTSTRUCT masks, planted faults), written as the converter reads them, from one of two phantoms:
  the analytic box phantom (:mod:`~clips_nnunet.synthetic.phantom`, the default) or the whole-body lymphoma twin
  (:mod:`~clips_nnunet.synthetic.twin`: anatomy and physiology in ``twin_anatomy``, DLBCL disease in
  ``twin_disease``, rasterisation in ``twin_render``, PSF and noise in ``twin_physics``, DICOM glue in
  ``twin_cohort``, threshold ceiling in ``twin_ceiling``).
- :mod:`clips_nnunet.synthetic.raw`: a 2-channel nnU-Net raw dataset written directly (box cases, or twins on the
  study grid).
- Annotation errors: :mod:`~clips_nnunet.synthetic.annotation_errors` (box) and
  :mod:`~clips_nnunet.synthetic.twin_annotators` (realistic annotators for twins).

The truth (clean masks, SUV, planted faults) is kept beside the data, never inside an nnU-Net dataset.
"""
