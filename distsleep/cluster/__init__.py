"""Running on real clusters: a multi-node Ray cluster on one machine (`local.py`) and the checks that
catch cluster pitfalls before a job starts (`preflight.py`)."""
