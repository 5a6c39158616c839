"""Curriculum mathematics in plain numpy (no torch, no nnunetv2): pacing functions, self-paced weights,
per-case difficulty state and schedulers that turn state + training progress into per-case sampling probabilities.
"""
