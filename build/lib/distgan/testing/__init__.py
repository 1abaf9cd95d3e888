"""Helpers for distgan's tests and benchmarks: ``gloo.run`` runs a function in N fresh processes joined
by a plain gloo process group (no Ray)."""
