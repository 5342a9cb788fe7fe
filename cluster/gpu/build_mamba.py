"""Builds mamba-ssm's selective-scan CUDA kernel on a bare GPU box, for this GPU's architecture only, and lays out
the part of the `mamba_ssm` package that `distsleep.models.mamba` imports, in a folder for PYTHONPATH.

    python3 cluster/gpu/build_mamba.py .gpucheck/mamba/mamba_ssm-*.tar.gz SITE

Why not `pip install mamba-ssm`: the box has no network (its setup.py first tries to download a prebuilt wheel),
the package compiles its kernel for nine architectures (tens of minutes), and its `__init__` imports the
language-model code and with it `transformers`, which the box lacks. Here: one architecture (the one
torch.cuda reports), the package's own nvcc flags, and `mamba_ssm/__init__.py` reduced to its version, so that
`mamba_ssm.ops.selective_scan_interface` (the kernel's Python side: einops, triton, packaging) imports alone.
Needs nvcc (CUDA_HOME) and ninja.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

KERNEL_SOURCES = ["selective_scan.cpp", *(f"selective_scan_{p}.cu" for p in (
    "fwd_fp32", "fwd_fp16", "fwd_bf16", "bwd_fp32_real", "bwd_fp32_complex", "bwd_fp16_real", "bwd_fp16_complex",
    "bwd_bf16_real", "bwd_bf16_complex"))]
# The Python files the selective-scan interface needs (its imports, followed by hand from the 2.3 sources).
PYTHON_FILES = ["ops/__init__.py", "ops/selective_scan_interface.py", "ops/triton/__init__.py",
                "ops/triton/layer_norm.py", "utils/__init__.py", "utils/torch.py", "utils/determinism.py"]
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "--use_fast_math", "-lineinfo", "--threads", "4"]


def main(sdist: str, site: str) -> int:
    started = time.monotonic()
    site_path = Path(site).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        root = next(Path(scratch).glob("mamba_ssm-*"))
        package = site_path / "mamba_ssm"
        for name in PYTHON_FILES:
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / "mamba_ssm" / name, package / name)
        version = (root / "mamba_ssm" / "__init__.py").read_text().splitlines()[0]  # __version__ = "..."
        (package / "__init__.py").write_text(version + "\n")
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # cpp_extension's -gencode: this GPU's only
        print(f"building selective_scan_cuda for sm_{major}{minor} ({torch.cuda.get_device_name()}), {version}", flush=True)
        build = site_path / "_mamba_build"
        build.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name="selective_scan_cuda", sources=[str(root / "csrc" / "selective_scan" / s) for s in KERNEL_SOURCES],
            extra_include_paths=[str(root / "csrc" / "selective_scan")], extra_cflags=["-O3", "-std=c++17"],
            extra_cuda_cflags=NVCC_FLAGS,
            build_directory=str(build), verbose=False)
    for built in build.glob("selective_scan_cuda*.so"):
        shutil.copy2(built, site_path / built.name)  # importable as a top-level module from SITE
    print(f"built in {time.monotonic() - started:.0f} s into {site_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
