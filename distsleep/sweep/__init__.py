"""Ray Tune sweeps over the masking ratio (and other knobs), one MLflow child run per trial, and the
Table-4-style comparison of their results."""

from distsleep.sweep.config import PAPER_MASK_RATIOS, SweepConfig

__all__ = ["PAPER_MASK_RATIOS", "SweepConfig"]
