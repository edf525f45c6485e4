"""Every method the platform trains, loads, plays and scores: one interface (`base.py`), one
registry (`registry.py`), one file per method, one training loop (`training.py`) and one
checkpoint format (`checkpoint.py`)."""
