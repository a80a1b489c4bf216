"""Analysis of finished or running runs: phase detection, the run summary, the sweep table and
head ablation."""
