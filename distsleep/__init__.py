"""distsleep: distributed training of sleep-staging foundation models."""

__version__ = "0.1.0"
