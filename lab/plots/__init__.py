"""Figures, drawn from the files in run directories (JAX-free): a run's (run.py), a comparison of runs
(compare.py), a sweep's (sweep.py) with its HTML report (report.py), and a head ablation's
(ablation.py). Their shared style and helpers are in style.py, the clamp windows they shade in
clamp_windows.py and the phase change they mark in transition.py. A new run or sweep figure is one
decorated function in run.py (`@run_figure`) or sweep.py (`@sweep_figure`)."""
