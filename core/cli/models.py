"""`recital models`: the models a name can refer to (yours first, then the shipped ones), one line each; a
directory that cannot be read shows why on its line and never stops the listing."""

from __future__ import annotations

import argparse

HELP = "list shipped and fine-tuned models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", action="store_true", help="show each model's directory")


def run(args: argparse.Namespace) -> int:
    from core.budget import format_bytes
    from core.modeldir import SHIPPED_DIR, list_models, user_models_dir

    models = list_models()
    if not models:
        print(f"no models found (yours go in {user_models_dir()}, shipped ones live in {SHIPPED_DIR})")
        return 0
    width = max(len(info.name) for info in models)
    for info in models:
        line = f"{info.name:<{width}}  {info.source:<7}  {info.arch:<10}  {format_bytes(info.size_bytes):>9}"
        line += f"  {info.summary}" if info.summary else ""
        line = line.replace("\n", "\\n").replace("\r", "\\r")  # one line per model, whatever its name holds
        print(line + (f"\n{'':<{width}}  {info.path}" if args.paths else ""))
    return 0
