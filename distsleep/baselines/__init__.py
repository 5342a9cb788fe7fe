"""Off-the-shelf stagers that trained models are compared against."""
