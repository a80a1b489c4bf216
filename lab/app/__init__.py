"""The one place that runs things: `run()`, the command-line entry points and the checks before
Hydra starts."""
