"""`python -m lab.train` was the training command before lab/ was split into layers; it is now
`python -m lab` (or `lab-train`). Say so instead of Python's "No module named lab.train.__main__"."""
import sys

if __name__ == "__main__":
    print(f"error: `python -m lab.train` is now `python -m lab` (or `lab-train`): "
          f"python -m lab {' '.join(sys.argv[1:])}".rstrip(), file=sys.stderr)
    sys.exit(2)
