import pytest
import torch

from digitcnn.errors import ConfigError
from digitcnn.training import runtime

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_on_amx_cpus(monkeypatch, has_amx, expected):
    monkeypatch.setattr(runtime, "_cpu_has_amx", lambda: has_amx)
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"


def test_auto_precision_on_cuda_stays_fp32_until_measured():
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_bf16_on_mps_is_refused():
    with pytest.raises(
        ConfigError,
        match="--precision bf16 is supported on the CPU and CUDA, not on mps; use --precision fp32",
    ):
        runtime.resolve_precision("bf16", torch.device("mps"))


def test_autocast_dtype():
    assert runtime.autocast_dtype("bf16") is torch.bfloat16
    assert runtime.autocast_dtype("fp32") is None


def test_fold_workers(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 2)
    assert runtime.fold_workers(None, 4, CPU) == 2
    assert runtime.fold_workers(None, 1, CPU) == 1
    assert runtime.fold_workers(8, 4, CPU) == 4
    assert runtime.fold_workers(1, 4, CPU) == 1
    assert runtime.fold_workers(None, 4, torch.device("cuda")) == 1
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.fold_workers(None, 4, CPU) == 1


def test_cpu_cores_is_positive():
    assert runtime.cpu_cores() >= 1


def test_cpu_description_names_the_cpu_and_its_amx():
    """What bench.json records next to CPU timings (they compare within one machine only)."""
    described = runtime.cpu_description()
    assert set(described) == {"model", "amx"}
    assert isinstance(described["model"], str) and described["model"].strip()
    assert isinstance(described["amx"], bool)
    assert described["amx"] == (runtime.resolve_precision("auto", torch.device("cpu")) == "bf16")


def test_gpu_description_names_the_card_only_on_cuda():
    assert runtime.gpu_description(CPU) is None
    if not torch.cuda.is_available():
        assert runtime.gpu_description("cuda") is None
        return
    card = runtime.gpu_description("cuda")
    assert card["name"] == torch.cuda.get_device_name(0)
    assert card["capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
    assert card["memory_gib"] > 1
