"""Triton kernels of compress (installed as compress.triton_kernels).

Each module holds `_<op>_kernel` and a launcher taking torch tensors; the ops layer
(compress.ops) registers the launchers as custom ops. Kernels know tensors, not models.
"""
