"""Stand-ins for sparse tensor cores on a CPU machine (test seams of ria_kernels.sparse_linear.module, where SparseLinear looks them up).

FAKED here, and only here: which tensor-core backends "can run", which metadata order the CUTLASS kernel of
the "GPU" reads (``cutlass_layout``), the compressed copies the copy backends hold (uint8 zero buffers of the
documented sizes), cuSPARSELt's matmul (the float32 reference of the weight the copy was built from) and the
CUTLASS matmul (the float32 reference of the compact values + the metadata it is handed, decoded from
``cutlass_layout`` by the real converter). Everything else a module does around them is the real code."""
from __future__ import annotations

import torch

from ria_kernels import sparse_linear as sl
from ria_kernels.sparse_linear import module as sl_module
from ria_kernels.ops.sparse24_layout import meta_layout_for
from ria_kernels.ops.sparse24_mm import sparse24_mm_reference
from ria_kernels.ops.sparse_mm import sparse_mm_reference


def cslt_bytes(n, k, itemsize):
    """cuSPARSELt's compressed 2:4 size as documented: the kept half of the values plus 2 bits of index per
    kept value (= the compact format's bytes); the real size (with any tile padding) is asserted on a GPU
    by test_fast_mode_bytes_on_gpu."""
    return n * k // 2 * itemsize + n * k // 8


class FakeTensorCores:
    """Seams that let a CPU module hold and run 'tensor-core copies': availability, the compressors
    (fake copies of the documented sizes, recording their inputs) and the cuSPARSELt matmul (the float32
    reference of the dense weight the copy was built from, so outputs stay checkable)."""

    def __init__(self, monkeypatch, runnable=("cusparselt",), cutlass_layout="sm90", any_dtype=False):
        """``any_dtype``: lay out float32 weights too (real kernels take fp16/bf16 only), so a test can check
        the layouts end to end at float32 tolerances."""
        self.runnable = set(runnable)
        self.cutlass_layout = cutlass_layout
        self.compressed: list[tuple[str, torch.Tensor]] = []
        self.cslt_calls: list[tuple[int, tuple]] = []
        self.cutlass_calls: list[tuple[int, torch.dtype]] = []
        self.dense_of: dict[int, torch.Tensor] = {}
        real = sl.backend_unavailable_reasons

        def reasons(device, dtype, n, k, backends=sl.BACKENDS):
            out = real(device, torch.float16 if any_dtype and dtype == torch.float32 else dtype, n, k, backends)
            return {b: (None if b in self.runnable else r) for b, r in out.items()}

        def compress(backend, dense):
            dense = sl.positive_zeros(dense)  # what the real _compress_for_backend hands the compressors
            self.compressed.append((backend, dense.clone()))
            n, k = dense.shape
            if backend == "cusparselt":
                copy = torch.zeros(cslt_bytes(n, k, dense.element_size()), dtype=torch.uint8)
                self.dense_of[copy.data_ptr()] = dense.clone()
                return copy
            return (torch.zeros(n, k // 2, dtype=dense.dtype), torch.zeros(n, k // 16, dtype=torch.int16))

        def cslt_matmul(x2, compressed, n, bias, cfg):
            self.cslt_calls.append((x2.shape[0], tuple(cfg)))
            return sparse_mm_reference(x2, self.dense_of[compressed.data_ptr()], bias).to(x2.dtype)

        def layout(device, dtype, n, k):  # the real rule for the faked GPU's capability
            if "cutlass" not in self.runnable:
                return "rowmajor"
            got = meta_layout_for((9, 0) if self.cutlass_layout == "sm90" else (8, 0), n, k,
                                  torch.float16 if any_dtype else dtype)
            return got if got == self.cutlass_layout else "rowmajor"

        def cutlass_matmul(x2, values, meta, bias):
            self.cutlass_calls.append((x2.shape[0], meta.dtype))
            return sparse24_mm_reference(x2, values, meta, bias, meta_layout=self.cutlass_layout)

        monkeypatch.setattr(sl_module, "cutlass_meta_layout", layout)
        monkeypatch.setattr(sl_module, "_cutlass_matmul", cutlass_matmul)
        monkeypatch.setattr(sl_module, "backend_unavailable_reasons", reasons)
        monkeypatch.setattr(sl_module, "_compress_for_backend", compress)
        monkeypatch.setattr(sl_module, "_cslt_matmul", cslt_matmul)

    def as_gpu(self, m, monkeypatch, table, capturing=False):
        """Make ``m`` look like a module on a GPU (device type, cache section); returns it."""
        monkeypatch.setattr(m, "_device_type", lambda: "cuda")
        m._section = "fake-gpu"
        m._memo.clear()
        monkeypatch.setattr(sl_module, "_capturing", lambda device: capturing)
        sl.set_tune_table(table)
        return m
