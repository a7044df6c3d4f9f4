"""`python -m trainer FOLDER ...`: `recital train` as a module, for torchrun.

    torchrun --nproc_per_node=4 -m trainer FOLDER --base none --arch dsmr --steps 20000 --batch 32

Every process runs this; rank 0 alone prints progress and writes the model directory and checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.errors import RecitalError
from trainer import cli
from trainer.distributed import leave


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=cli.TRAIN_HELP)
    cli.add_train_arguments(parser)
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the other ranks' summaries would repeat rank 0's
    try:
        return cli.run_train(args)
    except RecitalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        leave(code)
    sys.exit(code)
