"""Evaluation: pure metrics, baselines and the harness that runs a checkpoint over the feature cache."""
