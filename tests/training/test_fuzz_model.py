"""Fuzzing saved models: a tampered model.json or safetensors header loads the original model
or is refused with a DigitCNNError (CheckpointError, ModelError), never another exception and
never a large allocation.

The fuzzing runs in a child process (this file run as a script) under a memory limit: the
address space may grow by at most ``HEADROOM`` beyond what importing torch mapped (a CUDA
build of torch maps gigabytes of virtual memory it never touches, so an absolute RLIMIT_AS
would be meaningless), and the child's peak RSS is checked afterwards. An allocation the
metadata asked for would fail under the limit and surface as a MemoryError or RuntimeError,
which the property reports as a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEADROOM = 2 * 1024**3  # address space the fuzzing may add to what torch mapped
PEAK_RSS_BOUND = 1_500_000_000  # bytes, the bound
GROWTH_BOUND = 256 * 1024**2  # bytes the fuzzing may add to the peak after the imports
EXAMPLES = 150  # per property; fixed seed (derandomize), about 10 s on 2 cores


def test_fuzzed_model_files_load_or_fail_cleanly(tmp_path):
    # Started through a small launcher: a child forked straight from this test process begins
    # its ru_maxrss at the test process's own peak (Linux carries the high-water mark over exec).
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", launcher, sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["examples"] >= 2 * EXAMPLES * 0.9  # hypothesis really ran the examples
    assert report["loaded"] > 0 and report["refused"] > 0  # both outcomes were exercised
    # the libraries alone take most of it (torch's CUDA build ~0.5 GB); the fuzzing adds little
    assert report["peak_rss"] < PEAK_RSS_BOUND, report
    assert report["peak_rss"] - report["rss_before"] < GROWTH_BOUND, report


# ----------------------------------------------------------------------------- the child


def _limit_address_space() -> None:
    import resource

    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _fuzz(folder: Path) -> dict:
    import math

    import torch
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from digitcnn.checkpoint import load_model, save_model
    from digitcnn.errors import DigitCNNError
    from digitcnn.models import create_model
    from digitcnn.training.scaling import fit_scaler

    torch.set_num_threads(1)
    torch.manual_seed(0)
    # digitnet_small has BatchNorm, so the file holds an I64 counter beside the F32 weights
    original = create_model("digitnet_small", (1, 8, 8), 10).eval()
    images = torch.randint(0, 17, (20, 1, 8, 8), dtype=torch.uint8)
    scaler = fit_scaler("standard", images, 16)
    json_path = save_model(
        original,
        folder / "model.safetensors",
        meta={
            "model": "digitnet_small",
            "input_shape": [1, 8, 8],
            "num_classes": 10,
            "classes": list(range(10)),
            "model_options": {},
            "init": "default",
            "scaler": scaler.to_dict(),
        },
    )
    weights_path = json_path.with_suffix(".safetensors")
    good_meta = json.loads(json_path.read_text())
    good_weights = weights_path.read_bytes()
    expected = {name: tensor.clone() for name, tensor in original.state_dict().items()}
    counts = {"examples": 0, "loaded": 0, "refused": 0, "rss_before": _peak_rss()}

    def check() -> None:
        """The property: the original weights, or a DigitCNNError."""
        counts["examples"] += 1
        try:
            loaded = load_model(json_path)
        except DigitCNNError:
            counts["refused"] += 1
            return
        counts["loaded"] += 1
        state = loaded.model.state_dict()
        assert list(state) == list(expected)
        for name, tensor in expected.items():
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
        # a scaler that loads is usable: finite offsets, positive finite divisors
        assert torch.isfinite(loaded.mean).all() and torch.isfinite(loaded.scale).all()
        assert (loaded.scale > 0).all()
        log_probs = loaded.predict_log_probs(images)
        assert log_probs.shape == (len(images), len(loaded.meta["classes"]))
        assert torch.isfinite(log_probs).all()

    numbers = st.one_of(
        st.integers(-3, 40),
        st.sampled_from([0, 1, 10, 64, 1_000_000_000, 2**31, 2**63, -(2**63), 10**30, 10**400]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
    )
    texts = st.one_of(
        st.text(max_size=12),
        st.sampled_from(
            [
                "../../../../etc/hostname",
                "/etc/hostname",
                "..",
                ".",
                "model.safetensors",
                "model.json",
                "model.pt",
                "s5",
                "s1",
                "digitnet",
                "digitnet_small",
                "standard",
                "none",
                "NaN",
                "sub/model.safetensors",
                "model.safetensors\x00",
            ]
        ),
    )
    leaves = st.one_of(st.none(), numbers, texts)
    # mostly single numbers and texts, the values a field most plausibly gets wrong
    values = st.one_of(
        numbers,
        texts,
        st.recursive(
            leaves,
            lambda inner: st.one_of(
                st.lists(inner, max_size=12),
                st.dictionaries(st.text(max_size=8), inner, max_size=4),
            ),
            max_leaves=20,
        ),
    )
    fields = st.sampled_from(
        sorted(good_meta)
        + [
            "dropout_option",
            "width_option",
            "input_shape_item",
            "classes_item",
            "scaler_kind",
            "scaler_mean_item",
            "scaler_scale_item",
            "scaler_scale_all",
        ]
    )

    fuzz_settings = settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )

    @fuzz_settings
    @given(field=fields, value=values, index=st.integers(0, 63), delete=st.booleans())
    @example(field="num_classes", value=1_000_000_000, index=0, delete=False)
    @example(field="weights", value="../../../../etc/hostname", index=0, delete=False)
    @example(field="scaler_scale_item", value=0, index=5, delete=False)
    @example(field="scaler_scale_all", value=math.nan, index=0, delete=False)
    @example(field="input_shape_item", value=100_000, index=1, delete=False)
    @example(field="width_option", value=10**6, index=0, delete=False)
    def fuzz_meta(field, value, index, delete):
        meta = json.loads(json.dumps(good_meta))
        if field.endswith("_option"):
            meta["model_options"] = {field.removesuffix("_option"): value}
        elif field == "input_shape_item":
            meta["input_shape"][index % 3] = value
        elif field == "classes_item":
            meta["classes"][index % 10] = value
        elif field == "scaler_kind":
            meta["scaler"]["kind"] = value
        elif field.startswith("scaler_") and field.endswith("_item"):
            meta["scaler"][field[7:-5]][index] = value
        elif field == "scaler_scale_all":
            meta["scaler"]["scale"] = [value] * 64
        elif delete:
            del meta[field]
        else:
            meta[field] = value
        json_path.write_text(json.dumps(meta))  # NaN and Infinity as Python's json writes them
        weights_path.write_bytes(good_weights)
        check()

    length = int.from_bytes(good_weights[:8], "little")
    good_header = json.loads(good_weights[8 : 8 + length])
    data = good_weights[8 + length :]
    names = sorted(name for name in good_header if name != "__metadata__")
    dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "X", 3])
    shapes = st.lists(
        st.one_of(st.integers(0, 300), st.sampled_from([2**31, 2**40, 10**12, -1])), max_size=5
    )
    edits = st.sampled_from(
        [
            "shape",
            "dtype",
            "offsets",
            "delete",
            "add",
            "rename",
            "metadata",
            "length",
            "truncate",
            "append",
            "value",
        ]
    )

    @fuzz_settings
    @example(
        edit="shape",
        name=names[0],
        shape=[10**12, 1, 3, 3],
        dtype="F32",
        offsets=[],
        value=None,
        amount=1,
        other=names[0],
    )
    @example(
        edit="length",
        name=names[0],
        shape=[],
        dtype="F32",
        offsets=[],
        value=None,
        amount=2**20 - 1,
        other=names[0],
    )
    @given(
        edit=edits,
        name=st.sampled_from(names),
        shape=shapes,
        dtype=dtypes,
        offsets=st.lists(
            st.integers(-10, len(data) + 10) | st.sampled_from([2**40]), min_size=0, max_size=3
        ),
        value=values,
        amount=st.integers(1, 2**20),
        other=st.sampled_from(names),
    )
    def fuzz_header(edit, name, shape, dtype, offsets, value, amount, other):
        header = json.loads(json.dumps(good_header))
        body, prefix = data, None
        if edit == "shape":
            header[name]["shape"] = shape
        elif edit == "dtype":
            header[name]["dtype"] = dtype
        elif edit == "offsets":
            header[name]["data_offsets"] = offsets
        elif edit == "delete":
            del header[name]
        elif edit == "add":
            header[f"extra.{name}"] = dict(header[name])
        elif edit == "rename":
            header[other], header[name] = header[name], header[other]  # swapped entries
        elif edit == "metadata":
            header["__metadata__"] = value
        elif edit == "value":
            header[name] = value
        text = json.dumps(header).encode()
        if edit == "length":
            prefix = (len(text) + amount % 4097 - 2048) % 2**64
        elif edit == "truncate":
            body = data[: max(0, len(data) - amount)]
        elif edit == "append":
            body = data + b"\0" * (amount % 4096)
        prefix = len(text) if prefix is None else prefix
        weights_path.write_bytes(prefix.to_bytes(8, "little") + text + body)
        json_path.write_text(json.dumps(good_meta))
        check()

    fuzz_meta()
    fuzz_header()
    return counts


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def main(folder: str) -> int:
    import torch  # noqa: F401 - mapped before the limit is set

    _limit_address_space()
    counts = _fuzz(Path(folder))
    print(json.dumps({**counts, "peak_rss": _peak_rss()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
