"""Launchers: the only layer that imports Ray and submitit. ``main.run`` is what launch/run.py calls."""
