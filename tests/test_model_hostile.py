"""Hostile and damaged model directories: each is refused with a one-line ModelError, never a traceback, a hang or
gigabytes allocated first.

Cases that could hang (named pipes) or allocate much (huge sizes) run in a worker process that a hang cannot
stall (it is killed after WAIT_SECONDS, and the case fails as a hang) and that reports its peak resident memory,
so a case that allocates before refusing fails on the number, not by taking the machine down.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from core.errors import ModelError
from core.modeldir import CARD, CONFIG, WEIGHTS, list_models, load_model, read_card, save_model
from core.models.dsmr import DSMRConfig
from core.models.perceivers import PerceiverS, PerceiverSConfig

ROOT = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 60.0  # a hang guard for the worker, far above any case's time (they take milliseconds)
PEAK_BOUND_KB = 256 * 1024  # resident memory a refused directory may add to the worker's peak

# -- directories ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_perceivers_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = PerceiverSConfig(context=64, latents=16, scale=32, d_model=32, n_heads=2, n_layers=1,
                              default_budget="256KB")
    return save_model(PerceiverS(config), tmp_path_factory.mktemp("models") / "tiny-p", "# Tiny PerceiverS\n")


def copy_of(model_dir: Path, tmp_path: Path, name: str = "hostile") -> Path:
    path = tmp_path / name
    shutil.copytree(model_dir, path)
    return path


def meta_of(path: Path) -> dict:
    return json.loads((path / CONFIG).read_text())


def with_config_text(model_dir: Path, tmp_path: Path, text: str) -> Path:
    path = copy_of(model_dir, tmp_path)
    (path / CONFIG).write_text(text)
    return path


def with_field(model_dir: Path, tmp_path: Path, keys: tuple[str, ...], value: object) -> Path:
    """A copy whose config.json has `value` at `keys` (json.dumps writes NaN and Infinity as JavaScript does)."""
    path = copy_of(model_dir, tmp_path)
    meta = meta_of(path)
    target = meta
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    (path / CONFIG).write_text(json.dumps(meta))
    return path


# -- a worker process: hangs are caught, peak memory is measured ---------------------------------------------

WORKER = r"""
import json, resource, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from core.errors import ModelError
from core.modeldir import list_models, load_model, read_card

def run(op, path):
    if op == "load":
        return load_model(Path(path)).arch
    if op == "card":
        return read_card(Path(path))[:40]
    return [[i.name, i.arch, i.summary] for i in list_models()]

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"kind": "ok", "value": run(request["op"], request["path"])}
    except ModelError as error:
        answer = {"kind": "model_error", "message": str(error)}
    except BaseException as error:
        answer = {"kind": "other", "message": f"{type(error).__name__}: {error}"[:2000]}
    answer["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(answer), flush=True)
"""


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        assert self._line() == "ready\n"

    def _line(self) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT_SECONDS)
        if not ready:
            self.process.kill()
            pytest.fail("the worker hung")
        return self.process.stdout.readline()

    def ask(self, op: str, path: Path | None = None) -> dict:
        self.process.stdin.write(json.dumps({"op": op, "path": str(path)}) + "\n")
        self.process.stdin.flush()
        line = self._line()
        assert line, f"the worker died (exit code {self.process.wait()})"
        return json.loads(line)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tiny_perceivers_dir, tmp_path_factory):
    """One worker for the module, warmed up by loading both tiny models (its baseline peak is taken after)."""
    data = tmp_path_factory.mktemp("worker-data")
    worker = Worker({"RECITAL_DATA_DIR": str(data)})
    worker.models = data / "models"
    for path in (tiny_model_dir, tiny_perceivers_dir):
        assert worker.ask("load", path)["kind"] == "ok"
    worker.baseline_kb = worker.ask("list")["peak_kb"]
    yield worker
    worker.close()


def refused_within_bound(worker: Worker, path: Path, message: str | None = None) -> str:
    answer = worker.ask("load", path)
    assert answer["kind"] == "model_error", answer
    assert "\n" not in answer["message"]
    assert answer["peak_kb"] - worker.baseline_kb < PEAK_BOUND_KB, answer
    if message is not None:
        assert message in answer["message"], answer["message"]
    return answer["message"]


# -- the crafted directories of the issue -----------------------------------------------------------------------

@pytest.mark.parametrize("keys, value, message", [
    (("config", "n_layers"), 1000, "n_layers must be between 1 and 256, got 1000"),
    (("config", "n_layers"), 1e4, "n_layers must be a whole number, got 10000.0"),
    (("config", "d_model"), 1e6, "d_model must be a whole number, got 1000000.0"),
    (("config", "d_model"), 8192, "weights do not fit the config (embed.weight is 391x32 in the file"),
    (("config", "segment_len"), 2**40, "segment_len must be between"),
])
def test_huge_sizes_are_refused_before_anything_is_allocated(worker, tiny_model_dir, tmp_path, keys, value, message):
    path = with_field(tiny_model_dir, tmp_path, keys, value)
    assert refused_within_bound(worker, path, message).startswith(f"{path / CONFIG}:" if "whole" in message
                                                                  or "between" in message else str(path))


def test_the_largest_allowed_model_is_checked_against_the_weights_without_being_built(worker, tiny_model_dir,
                                                                                    tmp_path):
    """d_model 8192 x 256 layers (824 GB of float32) passes the config checks; the weights header stops it."""
    path = with_field(tiny_model_dir, tmp_path, ("config",), {
        **meta_of(tiny_model_dir)["config"], "d_model": 8192, "n_layers": 256, "n_heads": 64, "mlp_ratio": 64,
        "trained_horizons": None})
    refused_within_bound(worker, path, "weights do not fit the config")


def test_deeply_nested_json(tiny_model_dir, tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    text = json.dumps({**meta_of(tiny_model_dir), "config": "X"}).replace('"X"', nested)
    with pytest.raises(ModelError, match="cannot read the model config .nested too deeply"):
        load_model(with_config_text(tiny_model_dir, tmp_path, text))


def test_an_integer_of_5000_digits(tiny_model_dir, tmp_path):
    text = json.dumps({**meta_of(tiny_model_dir), "format": "X"}).replace('"X"', "1" + "0" * 4999)
    with pytest.raises(ModelError, match="an integer of more than 4,300 digits"):
        load_model(with_config_text(tiny_model_dir, tmp_path, text))


def test_an_integer_too_long_to_print_is_named_by_its_size(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="d_model must be between 2 and 8,192, got a number of about 4,000 digits"):
        load_model(with_field(tiny_model_dir, tmp_path, ("config", "d_model"), 10**3999))


@pytest.mark.parametrize("keys, value, message", [
    (("format",), "1", "\"format\" must be a whole number from 1, got '1'"),
    (("format",), None, "\"format\" must be a whole number from 1, got None"),
    (("format",), True, "\"format\" must be a whole number"),
    (("format",), 1.0, "\"format\" must be a whole number"),
    (("tokenizer",), "performance", "\"tokenizer\" must be an object"),
    (("tokenizer", "vocab_size"), 391.0, "made for tokenizer 'performance' with 391.0 ids"),
    (("config", "long_ratio"), float("nan"), "cannot read the model config (NaN is not a finite number)"),
    (("config", "long_ratio"), float("inf"), "(Infinity is not a finite number)"),
    (("config", "long_ratio"), float("-inf"), "(-Infinity is not a finite number)"),
    (("config", "long_ratio"), 0.5, "long_ratio must be between 1 and 1,024, got 0.5"),
    (("config", "horizons"), ["8", "8"], "horizons must be a list of whole numbers or null, got ['8', '8']"),
    (("config", "trained_horizons"), "340", "trained_horizons must be a list of whole numbers or null"),
    (("config", "trained_horizons"), [4, -1], "trained_horizons must be 2 whole numbers from 0"),
    (("config", "rotary_base"), "10000", "rotary_base must be a finite number, got '10000'"),
    (("config", "rotary_base"), 0, "rotary_base must be between 1 and"),
    (("config", "rotary_base"), -1.0, "rotary_base must be between 1 and"),
    (("config", "rotary_base"), 1, "rotary_base must be greater than 1, got 1"),
    (("config", "dropout"), 1.0, "dropout must be in [0, 1)"),
    (("config", "segment_len"), 20_000, "segment_len must be between 1 and 16,384, got 20000"),
    (("config", "n_heads"), True, "n_heads must be a whole number, got True"),
    (("config", "schedule"), ["two_scale"], "schedule must be a string"),
    (("config", "default_budget"), 8, "default_budget must be a string"),
    (("config", "default_budget"), "9" * 400 + "GB", "default_budget: memory budget"),
    (("config", "default_budget"), "8 parsecs", "default_budget: cannot read memory budget"),
    (("config", "default_budget"), "64GB", "default_budget must be at most 16.0 GB"),
    (("config",), [1, 2], "malformed model config"),
    (("arch",), "x" * 10_000, "unknown model architecture 'xxxxx"),
])
def test_bad_field_values_name_the_file_and_the_field(tiny_model_dir, tmp_path, keys, value, message):
    path = with_field(tiny_model_dir, tmp_path, keys, value)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    text = str(caught.value)
    assert message in text and text.startswith(f"{path / CONFIG}: ") and "\n" not in text and len(text) < 400


def test_a_float_too_large_for_a_double(tiny_model_dir, tmp_path):
    text = json.dumps(meta_of(tiny_model_dir)).replace('"long_ratio": 4.0', '"long_ratio": 1e400')
    with pytest.raises(ModelError, match=r"\(1e400 is not a finite number\)"):
        load_model(with_config_text(tiny_model_dir, tmp_path, text))


@pytest.mark.parametrize("value, message", [
    (0, "rope_base must be between 1"), (-5.0, "rope_base must be between 1"), ("10000", "rope_base must be a"),
    (1.0, "rope_base must be greater than 1")])
def test_perceivers_rope_base(tiny_perceivers_dir, tmp_path, value, message):
    with pytest.raises(ModelError, match=message):
        load_model(with_field(tiny_perceivers_dir, tmp_path, ("config", "rope_base"), value))


# -- the weights file ---------------------------------------------------------------------------------------------

def test_a_nan_tensor_in_the_weights(tiny_model_dir, tmp_path):
    path = copy_of(tiny_model_dir, tmp_path)
    tensors = load_file(path / WEIGHTS)
    tensors["blocks.1.mlp.up.weight"][3, 4] = float("nan")
    save_file(tensors, path / WEIGHTS, metadata={"head.weight": "embed.weight"})
    with pytest.raises(ModelError, match=r"model.safetensors: blocks.1.mlp.up.weight contains NaN/inf values "
                                         r"\(damaged\?\)"):
        load_model(path)


def test_a_truncated_weights_file_is_damaged(tiny_model_dir, tmp_path):
    path = copy_of(tiny_model_dir, tmp_path)
    whole = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(whole[:-1000])
    with pytest.raises(ModelError, match=rf"is damaged \(truncated: {len(whole) - 1000:,} of {len(whole):,} bytes"):
        load_model(path)
    (path / WEIGHTS).write_bytes(whole + b"\0")
    with pytest.raises(ModelError, match=r"is damaged \(1 bytes past its last tensor\)"):
        load_model(path)
    (path / WEIGHTS).write_bytes(whole[:100])
    with pytest.raises(ModelError, match="is damaged .its header claims"):
        load_model(path)


def test_a_header_that_lies_about_a_tensor_is_damage(tiny_model_dir, tmp_path):
    path = copy_of(tiny_model_dir, tmp_path)
    whole = (path / WEIGHTS).read_bytes()
    length = int.from_bytes(whole[:8], "little")
    header = json.loads(whole[8:8 + length])
    header["norm.weight"]["shape"] = [64]  # twice the bytes its offsets hold
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(raw) == length
    (path / WEIGHTS).write_bytes(whole[:8] + raw + whole[8 + length:])
    with pytest.raises(ModelError, match=r"is damaged \(tensor norm.weight of shape \[64\] has 128 bytes\)"):
        load_model(path)


def test_weights_of_another_model_do_not_fit(tiny_model_dir, tiny_perceivers_dir, tmp_path):
    path = copy_of(tiny_model_dir, tmp_path)
    shutil.copy(tiny_perceivers_dir / WEIGHTS, path / WEIGHTS)
    with pytest.raises(ModelError, match=r"weights do not fit the config \(missing blocks.1.attn_norm.weight, .* \.\.\.; "
                                         r"unexpected cross.attn.kv_proj.weight, .*; the config needs 37,248 "):
        load_model(path)


def test_weights_stored_in_half_precision_load(tiny_model_dir, tmp_path):
    """The shipped models are stored in float16; any float dtype of the right shape is accepted."""
    path = copy_of(tiny_model_dir, tmp_path)
    tensors = {name: t.half() for name, t in load_file(path / WEIGHTS).items()}
    save_file(tensors, path / WEIGHTS, metadata={"head.weight": "embed.weight"})
    model = load_model(path)
    assert model.embed.weight.dtype == torch.float32
    assert torch.equal(model.embed.weight, tensors["embed.weight"].float())


# -- files that are not files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [CONFIG, CARD, WEIGHTS])
def test_a_named_pipe_never_blocks(worker, tiny_model_dir, tmp_path, name):
    path = copy_of(tiny_model_dir, tmp_path)
    (path / name).unlink()
    os.mkfifo(path / name)
    answer = worker.ask("card" if name == CARD else "load", path)
    assert answer["kind"] == "model_error", answer
    assert answer["message"].endswith("(it is a named pipe, not a file)")


@pytest.mark.parametrize("name", [CONFIG, CARD, WEIGHTS])
def test_a_link_to_dev_zero_is_refused(worker, tiny_model_dir, tmp_path, name):
    path = copy_of(tiny_model_dir, tmp_path)
    (path / name).unlink()
    (path / name).symlink_to("/dev/zero")
    answer = worker.ask("card" if name == CARD else "load", path)
    assert answer["kind"] == "model_error", answer
    assert answer["message"].endswith("(it is a device, not a file)")
    assert answer["peak_kb"] - worker.baseline_kb < PEAK_BOUND_KB


def test_a_link_to_a_regular_file_is_followed(tiny_model_dir, tmp_path):
    path = tmp_path / "linked"
    path.mkdir()
    for name in (CONFIG, CARD, WEIGHTS):
        (path / name).symlink_to(tiny_model_dir / name)
    assert load_model(path).arch == "dsmr" and read_card(path).startswith("# Tiny test model")


def test_files_too_large_or_not_text(tiny_model_dir, tmp_path):
    path = copy_of(tiny_model_dir, tmp_path)
    (path / CONFIG).write_bytes(b" " * (2 * 1024 * 1024))
    with pytest.raises(ModelError, match=r"cannot read the model config \(over 1,048,576 bytes: 2,097,152\)"):
        load_model(path)
    (path / CONFIG).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ModelError, match="not UTF-8 text at byte 0"):
        load_model(path)
    shutil.copy(tiny_model_dir / CONFIG, path / CONFIG)
    (path / CARD).unlink()
    (path / CARD).mkdir()
    with pytest.raises(ModelError, match=r"card.md: cannot read the model card \(it is a directory"):
        read_card(path)


def test_recital_models_lists_every_directory_one_line_each(tiny_model_dir, tmp_path):
    """Bad directories beside a good one: the listing neither blocks nor stops, and each shows on one line."""
    models = tmp_path / "data" / "models"
    shutil.copytree(tiny_model_dir, models / "good")
    pipe = copy_of(tiny_model_dir, models, "pipe")
    (pipe / CONFIG).unlink()
    os.mkfifo(pipe / CONFIG)
    zero = copy_of(tiny_model_dir, models, "zero")
    (zero / CARD).unlink()
    (zero / CARD).symlink_to("/dev/zero")
    garbage = copy_of(tiny_model_dir, models, "garbage")
    (garbage / CONFIG).write_bytes(os.urandom(300))
    shutil.copytree(tiny_model_dir, models / "two\nlines")
    (models / "a-file").write_text("not a model")
    os.mkfifo(models / "a-pipe")
    env = {**os.environ, "RECITAL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "core", "models"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=WAIT_SECONDS)  # a hang guard: the listing takes a second
    assert run.returncode == 0 and not run.stderr, run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()}
    assert "Tiny test model" in lines["good"] and " dsmr " in lines["good"]
    assert lines["pipe"].endswith("(it is a named pipe, not a file)")
    assert lines["zero"].endswith("(it is a device, not a file)")
    assert "unreadable:" in lines["garbage"] and "a-file" not in lines and "a-pipe" not in lines
    assert "Tiny test model" in lines["two\\nlines"] and len(lines) == len(run.stdout.splitlines())


def test_list_models_survives_an_unreadable_folder(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").write_text("a file where the models folder should be")
    monkeypatch.setenv("RECITAL_DATA_DIR", str(tmp_path / "data"))
    assert all(info.source == "shipped" for info in list_models())


# -- property: any valid JSON is loaded or refused, and refused before it costs memory -------------------------

# Values a config field may be given: ints (huge ones included), floats (NaN, inf, 1e300), strings, nulls, bools,
# nested lists. json.dumps writes NaN/Infinity, as a hand-edited file might hold them.
VALUES = st.one_of(
    st.integers(-4, 600),
    st.integers(-2**80, 2**80),
    st.sampled_from([0, 1, 2, 8, 16, 32, 10**6, 2**31, 2**63, 10**4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 1e6, 0.5, 4.0, 10000.0]),
    st.text(max_size=8),
    st.sampled_from(["10000", "8MB", "999999999999GB", "two_scale", "explicit", "full", "1e6"]),
    st.none(),
    st.booleans(),
    st.recursive(st.integers(-3, 40) | st.none() | st.text(max_size=2), lambda inner: st.lists(inner, max_size=4),
                 max_leaves=12),
)
FIELDS = {"dsmr": list(DSMRConfig.__dataclass_fields__), "perceivers": list(PerceiverSConfig.__dataclass_fields__)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), arch=st.sampled_from(["dsmr", "perceivers"]))
def test_random_field_values_load_or_are_refused_cheaply(worker, tiny_model_dir, tiny_perceivers_dir,
                                                         tmp_path_factory, data, arch):
    source = tiny_model_dir if arch == "dsmr" else tiny_perceivers_dir
    changes = data.draw(st.dictionaries(st.sampled_from(FIELDS[arch] + ["wings"]), VALUES, min_size=1, max_size=4))
    top = data.draw(st.dictionaries(st.sampled_from(["format", "tokenizer", "arch"]), VALUES, max_size=1))
    meta = meta_of(source)
    meta["config"].update(changes)
    meta.update(top)
    path = tmp_path_factory.mktemp("random")
    (path / CONFIG).write_text(json.dumps(meta))
    (path / WEIGHTS).symlink_to(source / WEIGHTS)
    answer = worker.ask("load", path)
    assert answer["kind"] in ("ok", "model_error"), answer
    assert answer["peak_kb"] - worker.baseline_kb < PEAK_BOUND_KB, answer
    if answer["kind"] == "model_error":
        assert "\n" not in answer["message"] and len(answer["message"]) < 600, answer["message"]
