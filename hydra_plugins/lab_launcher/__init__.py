"""`hydra/launcher=lab`: a sweep's jobs as separate OS processes (lab_launcher.py)."""
