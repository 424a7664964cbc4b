"""Packed weight formats: pure tensor code, no kernels. Each `to_*` has its inverse `from_*`/`unpack_*`.

Shapes: W is a weight [N, K] (nn.Linear layout: N outputs, K inputs).
"""
from compress.formats.sparse import (BSR, CSR, Sparse24, from_bsr, from_csr, pack_2_4, to_bsr, to_csr,
                                     unpack_2_4)

__all__ = ["BSR", "CSR", "Sparse24", "from_bsr", "from_csr", "pack_2_4", "to_bsr", "to_csr", "unpack_2_4"]
