"""Readers for polysomnography sources. Each returns a `Record` (see record.py)."""
