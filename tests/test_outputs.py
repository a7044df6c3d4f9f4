"""core/outputs.py and the atomic writer: what Recital refuses to write, and what it writes through."""

from __future__ import annotations

import os

import pytest

from core.errors import OutputError
from core.midi import atomic_write_bytes, read_performance, write_performance
from core.outputs import check_output, plan_outputs


def test_a_new_file_passes_and_an_existing_one_needs_force(tmp_path):
    new = tmp_path / "new.mid"
    assert check_output(new) == new
    new.write_bytes(b"mine")
    with pytest.raises(OutputError, match="already exists; pass --force to replace it"):
        check_output(new)
    assert check_output(new, force=True) == new
    assert new.read_bytes() == b"mine"  # checking never writes


def test_the_input_is_refused_even_with_force_also_through_links(tmp_path, scale):
    primer = tmp_path / "primer.mid"
    write_performance(scale, primer)
    hard = tmp_path / "hard.mid"
    os.link(primer, hard)
    soft = tmp_path / "soft.mid"
    soft.symlink_to(primer)
    for out in (primer, hard, soft, tmp_path / "." / "primer.mid"):
        with pytest.raises(OutputError, match=f"is the input {primer}"):
            check_output(out, inputs=[primer], force=True)


def test_devices_fifos_and_folders_are_refused(tmp_path):
    fifo = tmp_path / "pipe.mid"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO"):
        check_output(fifo, force=True)
    with pytest.raises(OutputError, match="is a FIFO"):
        atomic_write_bytes(fifo, b"x")
    assert fifo.exists() and not fifo.is_file()
    with pytest.raises(OutputError, match="is a device"):
        check_output("/dev/null", force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, force=True)
    with pytest.raises(OutputError, match="names a folder"):
        check_output(f"{tmp_path}/", force=True)


def test_a_symlink_is_followed_and_stays_a_link(tmp_path, scale):
    target = tmp_path / "takes" / "take.mid"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.mid"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="already exists"):
        check_output(link)
    write_performance(scale, check_output(link, force=True))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(read_performance(target)) == len(scale)
    dangling = tmp_path / "dangling.mid"
    dangling.symlink_to(tmp_path / "elsewhere" / "new.mid")
    assert plan_outputs([dangling]).create_folders() == [f"created folder {tmp_path / 'elsewhere'}"]
    write_performance(scale, dangling)
    assert dangling.is_symlink() and (tmp_path / "elsewhere" / "new.mid").is_file()


def test_missing_folders_are_created_only_when_writing_and_said(tmp_path):
    first = tmp_path / "a" / "b" / "one.mid"
    taken = tmp_path / "taken.mid"
    taken.write_bytes(b"mine")
    with pytest.raises(OutputError, match="taken.mid: already exists"):
        plan_outputs([first, taken])
    planned = plan_outputs([first, tmp_path / "a" / "b" / "two.mid"])
    assert planned.paths == (first, tmp_path / "a" / "b" / "two.mid")
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert planned.create_folders() == [f"created folder {first.parent}"] and first.parent.is_dir()
    assert planned.create_folders() == []


def test_a_file_where_a_folder_should_be_and_twice_the_same_output(tmp_path):
    (tmp_path / "notafolder").write_bytes(b"")
    with pytest.raises(OutputError, match="it is a file"):
        check_output(tmp_path / "notafolder" / "x.mid")
    with pytest.raises(OutputError, match="written twice"):
        plan_outputs([tmp_path / "x.mid", tmp_path / "." / "x.mid"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_output(folder / "x.mid")
    finally:
        folder.chmod(0o700)


def test_the_studio_replaces_an_opened_file_only_through_save_as(qapp, tmp_path, scale):
    """The studio's Save is Save As (whose dialog asks before replacing) until the piece was saved by it."""
    from types import SimpleNamespace

    from studio.document import Document
    from studio.window import MainWindow

    mine = tmp_path / "mine.mid"
    write_performance(scale, mine)
    original = mine.read_bytes()
    doc = Document()
    doc.open(mine)
    window = SimpleNamespace(document=doc, save_as=lambda: "save as", _save_to=lambda path: f"saved {path}")
    assert MainWindow.save(window) == "save as" and mine.read_bytes() == original
    doc.save(tmp_path / "copy.mid")
    assert MainWindow.save(window) == f"saved {tmp_path / 'copy.mid'}"
    doc.open(tmp_path / "copy.mid")
    assert MainWindow.save(window) == "save as"
