"""`python -m lab` is `lab-train`."""
from lab.app.cli import train_main

if __name__ == "__main__":
    train_main()
