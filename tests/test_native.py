"""The compiled extension entropy_kernels._C: it imports everywhere, reports how it was built,
and its read-checksum kernel (CPU loop and CUDA kernel) equals numpy's XOR of the same bytes."""

import os

import numpy as np
import pytest
import torch

import entropy_kernels.native as native


def numpy_checksum(t: torch.Tensor) -> int:
    raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
    raw += b"\0" * (-len(raw) % 4)
    return int(np.bitwise_xor.reduce(np.frombuffer(raw, dtype="<u4"), initial=0))


def as_u32(t: torch.Tensor) -> int:
    return int(t.item()) & 0xFFFFFFFF


def test_extension_imports_and_reports_build():
    import entropy_kernels._C as C

    info = native.build_info()
    assert set(info) == {"compiler", "with_cuda", "cuda_archs", "cuda_runtime_version"}
    assert info["with_cuda"] == hasattr(C, "read_checksum_cuda")
    if info["with_cuda"]:
        assert "90" in info["cuda_archs"] and info["cuda_runtime_version"] >= 11000
        assert C.cuda_device_count() == torch.cuda.device_count()


def test_extension_constants_match_the_python_side():
    import entropy_kernels._C as C
    from entropy_kernels.decoding import dfloat
    from entropy_kernels.ops import dfloat as ops

    assert C.DFLOAT_MAX_THREADS == dfloat.MAX_THREADS and C.DFLOAT_UNDECODABLE == ops.UNDECODABLE
    assert C.DFLOAT_BLOCK_BITS == ops.BLOCK_BITS and C.DFLOAT_MAX_CODE_LEN == dfloat.MAX_CODE_LEN
    # the installed build carries no sanitizer (EK_SANITIZE is for tests/test_ekdf_sanitize.py)
    assert C.sanitizers() == os.environ.get("EK_EXPECT_SANITIZERS", "")


@pytest.mark.skipif(os.environ.get("EK_EXPECT_CUDA_BUILD") != "1", reason="set EK_EXPECT_CUDA_BUILD=1 where nvcc was present at build")
def test_cuda_sources_were_compiled():
    # CI builds on a machine with nvcc and no GPU: the CUDA sources must still be compiled in.
    assert native.cuda_compiled()


@pytest.mark.parametrize("nbytes", [0, 1, 3, 4, 5, 15, 16, 17, 1000, 65539])
def test_read_checksum_cpu_matches_numpy(nbytes):
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    assert as_u32(native.read_checksum(data)) == numpy_checksum(data)


def test_read_checksum_of_views_and_dtypes():
    x = torch.randn(37, 41, dtype=torch.bfloat16)
    assert as_u32(native.read_checksum(x)) == numpy_checksum(x)
    view = x[:, 3:]  # non-contiguous: checksummed as its contiguous copy
    assert as_u32(native.read_checksum(view)) == numpy_checksum(view.contiguous())


def test_read_checksum_rejects_non_tensors():
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        native.read_checksum(b"abc")


@pytest.mark.gpu
@pytest.mark.parametrize("nbytes", [1, 4, 17, 4096 + 12, 10_000_019])
@pytest.mark.parametrize("offset", [0, 4, 8])
def test_read_checksum_cuda_matches_cpu(nbytes, offset):
    # offsets make the buffer start off a 16-byte boundary: head words + vector body + tail bytes
    data = torch.randint(0, 256, (nbytes + offset,), dtype=torch.uint8)
    gpu = data.cuda()[offset:]
    assert as_u32(native.read_checksum(gpu)) == numpy_checksum(data[offset:])
