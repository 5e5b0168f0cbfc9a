"""``python -m trainer`` and ``torchrun ... -m trainer``: the same CLI as the `trainer` script."""

from trainer.cli import main

if __name__ == "__main__":
    main(prog_name="trainer")
