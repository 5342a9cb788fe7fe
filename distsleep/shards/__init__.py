"""WebDataset shards: format, per-recording conversion, the Ray preprocessing job, and the training loader."""
