"""`recital ports`: the MIDI output and input ports, and the virtual port Recital can open."""

from __future__ import annotations

import argparse
import sys

HELP = "list MIDI output and input ports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Play to a port with `recital play FILE --port NAME`, or open the virtual port "
                     "\"Recital\" with --virtual. RECITAL_MIDI_API=alsa|jack|coremidi|winmm picks the MIDI system.")


def run(args: argparse.Namespace) -> int:
    from core.midiport import VIRTUAL_NAME, list_ports

    ports = list_ports()
    print(f"MIDI system: {ports.api}")
    for title, names in (("outputs (play to with --port NAME)", ports.outputs),
                         ("inputs (record from)", ports.inputs)):
        print(f"{title}:")
        if not names:
            print("  (none)")
        for index, name in enumerate(names):
            print(f"  {index:2d}  {name}")
    if sys.platform == "win32":
        print("virtual ports are not available on Windows: install a loopback driver such as loopMIDI")
    else:
        print(f"virtual: --virtual opens an output port named {VIRTUAL_NAME!r} for your DAW to connect to")
    return 0
