"""Screenshots of Recital Studio in a real window: at rest, mid-generation, and the fine-tune dialog mid-run.

    .venv/bin/python scripts/screenshots.py [--out /tmp/recital-shots] [--size 1366x768] [--model DIR]
        [--midi FILE] [--corpus FOLDER]

Without a display it starts Xvfb (`apt-get install xvfb`) on :99 and uses Qt's xcb platform, so the shots
show the window as a user sees it; with neither it stops with the packages to install (QT_QPA_PLATFORM=offscreen
runs it without X). Without --model it
uses the shipped default model (or, where none is shipped, a small DSMR with random weights). User folders
(settings, models, corpus cache) are temporary: nothing of the user's is read or written. An error dialog would
wait for a click that never comes: here it ends the script instead, with its message and exit code 2.
The fine-tune dialog is shot only with --corpus (a folder of MIDI files): its run trains for minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRIMER = ROOT / "assets" / "primers" / "primer.mid"
SHIPPED_DEFAULT = ROOT / "assets" / "models" / "default"


def start_display() -> subprocess.Popen | None:
    """A virtual X display when there is no display; None when one exists (or a Qt platform is set)."""
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if shutil.which("Xvfb") is None:
        sys.exit("error: no X display and no Xvfb to start one: sudo apt-get install xvfb libxcb-icccm4 "
                 "libxcb-keysyms1 imagemagick (or set DISPLAY)")
    server = subprocess.Popen(["Xvfb", ":99", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if server.poll() is not None:
        sys.exit(f"error: Xvfb did not start on :99 (exit code {server.returncode}; is display :99 taken?)")
    os.environ["DISPLAY"] = ":99"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    return server


def demo_model(folder: Path) -> Path:
    """A small two-scale DSMR with random weights, saved as a user model with a card."""
    import torch

    from core.modeldir import save_model
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    config = DSMRConfig(d_model=64, n_layers=6, n_heads=4, segment_len=256, max_horizon=8192, n_long=2,
                        default_budget="8MB")
    card = ("# demo: DSMR 6 x 64, random weights (for screenshots)\n\n"
            "- data: none (untrained)\n- best held-out perplexity: not measured\n")
    return save_model(DSMR(config), folder / "demo", card)


def pump(app, seconds: float, until=None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.01)


def window_size(text: str) -> tuple[int, int]:
    """'1366x768' -> (1366, 768), for argparse."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 1366x768") from None
    if width < 320 or height < 240:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 320x240")
    return width, height


def shoot(widget, path: Path) -> None:
    widget.grab().save(str(path))
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/recital-shots")
    parser.add_argument("--model", help="a model directory (default: the shipped default model)")
    parser.add_argument("--size", type=window_size, default=(1440, 900), help="window size, WIDTHxHEIGHT")
    parser.add_argument("--midi", default=str(PRIMER), help="the piece opened (default: the shipped primer)")
    parser.add_argument("--corpus", help="a MIDI folder: also shoot the fine-tune dialog scanning and training it")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="recital-shots-"))
    for name in ("CONFIG", "DATA", "CACHE"):
        os.environ[f"RECITAL_{name}_DIR"] = str(home / name.lower())
    server = start_display()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout` and Ctrl-C still stop Xvfb below
    sys.path.insert(0, str(ROOT))
    try:
        from PySide6.QtWidgets import QApplication

        import studio.window
        from studio import theme
        from studio.settings import Settings
        from studio.window import MainWindow

        def fail(parent, title: str, message: str) -> None:
            print(f"error dialog: {title}: {message}", file=sys.stderr)
            raise SystemExit(2)

        studio.window.show_error = fail
        app = QApplication(["recital-studio"])
        theme.apply(app)
        if args.model:
            model = Path(args.model).resolve()
        elif (SHIPPED_DEFAULT / "config.json").is_file():
            model = SHIPPED_DEFAULT
        else:
            model = demo_model(home / "data" / "models")
        # 16 MB: two takes of the default size (each lane's state needs at least 6 MB, 8 MB by default).
        window = MainWindow(Settings(budget_mb=16.0, seconds=40.0),
                            extra_models=[] if model == SHIPPED_DEFAULT else [model])
        window.resize(*args.size)
        window.show()
        pump(app, 10, lambda: window.model is not None)
        window.open_file(args.midi)
        pump(app, 0.5)
        shoot(window, out / "1-main-at-rest.png")

        window.roll.set_playhead(window.document.piece.duration * 0.75, user=True)
        window.panel.mode_playhead.setChecked(True)
        window.panel.variations.setValue(2)
        window.generate()
        pump(app, 60.0, lambda: window.generation is None or window.panel.progress.value() > 300)
        shoot(window, out / "2-main-generating.png")
        window.stop_generating()
        pump(app, 10, lambda: window.generation is None)
        pump(app, 0.3)
        shoot(window, out / "3-main-after-generation.png")
        window.panel.show_full_card()
        pump(app, 0.5)
        shoot(window.panel.full_card, out / "4-full-card.png")
        window.panel.full_card.close()
        if not args.corpus:
            window.document.undo_stack.setClean()
            window.close()
            return 0

        dialog = window.fine_tune(workers=1, train_options={"batch": 2, "val_every": 6, "log_every": 1,
                                                            "checkpoint_every": 50, "val_max_pieces": 1})
        dialog.resize(1000, 720)
        dialog.scan_folder(args.corpus)
        pump(app, 120, lambda: dialog.summary is not None)
        shoot(dialog, out / "5-finetune-folder.png")
        dialog.by_steps.setChecked(True)
        dialog.steps.setValue(60)
        dialog.out.setText("my-maestro")
        dialog.start_training()
        pump(app, 300, lambda: len(dialog.plot.held_out) >= 3 and len(dialog.plot.train) >= 14)
        shoot(dialog, out / "6-finetune-training.png")
        dialog.cancel_or_close()
        pump(app, 60, lambda: dialog.train is None)
        window.document.undo_stack.setClean()
        window.close()
        return 0
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
