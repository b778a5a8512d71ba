"""The compute precision: bfloat16 where the CPU multiplies it natively, float32 elsewhere, SKD_PRECISION over both."""

import pytest

from store import SkdError
from store.hardware import bf16_native, compute_dtype, cpu_has_native_bf16


@pytest.mark.parametrize(("flags", "native"), [("fpu sse avx512f amx_bf16 amx_tile", True),
                                               ("fpu avx512f avx512_bf16", True),
                                               ("fpu sse avx2 avx512f avx512bw", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(info) is native


def test_a_machine_without_cpuinfo_computes_in_float32(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_skd_precision_overrides_the_hardware(monkeypatch):
    import torch

    monkeypatch.setenv("SKD_PRECISION", "float32")
    assert not bf16_native("cpu") and compute_dtype("cpu") == torch.float32
    monkeypatch.setenv("SKD_PRECISION", "bfloat16")
    assert bf16_native("cpu") and compute_dtype() == torch.bfloat16
    monkeypatch.setenv("SKD_PRECISION", "fp8")
    with pytest.raises(SkdError, match="SKD_PRECISION='fp8'"):
        bf16_native()
