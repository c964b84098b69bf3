"""Ahead-of-time export: per-unit ONNX graphs + a manifest, and TensorRT engines built from them.

`manifest` (numpy + json only) describes an export and verifies its files; `onnx_export`
writes one (torch, onnx); `tensorrt_build` builds and caches engines (tensorrt, torch CUDA).
"""
