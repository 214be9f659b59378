"""pytest-benchmark suite over the same cases as ``entropy-kernels bench``.

    pytest benchmarks/                         quick shapes on the default device
    pytest benchmarks/ --ek-size full          production shapes (GPU)
    pytest benchmarks/ --benchmark-json out.json

Each test times one (case, provider) with pytest-benchmark (host wall clock around a
synchronised call) and stores the harness's own GPU-accurate measurement (do_bench median,
peak memory) in ``extra_info``, so both appear in the JSON.
"""

import torch


def pytest_addoption(parser):
    parser.addoption("--ek-size", default="quick", choices=["quick", "full"], help="benchmark shapes")
    parser.addoption("--ek-device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")


def pytest_generate_tests(metafunc):
    if "ek_case" not in metafunc.fixturenames:
        return
    from entropy_kernels.benchmarking import cases_for

    opt = metafunc.config.getoption
    device = torch.device(opt("--ek-device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    op = metafunc.module.OP
    params, ids = [], []
    for case in cases_for([op], opt("--ek-size"), device):
        for prov in case.providers:
            params.append((case, prov))
            ids.append(f"{case.mode}-{'-'.join(map(str, case.shape.values()))}-{prov.name}")
    metafunc.parametrize("ek_case", params, ids=ids)
