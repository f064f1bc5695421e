"""The `raymaas` command (main.py): argparse commands, each calling one library function."""

from raymaas.cli.main import main

__all__ = ["main"]
