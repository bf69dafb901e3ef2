"""Evaluation: per-granularity retrieval mAP, baselines, robustness, plots."""
