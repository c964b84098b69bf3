"""Ahead-of-time export: per-unit ONNX graphs + a manifest, and TensorRT engines built from them.

`onnx_export` writes an export (torch, onnx); `tensorrt_build` (the `engines` command) fills
its engine cache. What reads them lives in the runtime: `runtime.manifest` (numpy + json
only) describes an export and verifies its files, `runtime.engine_cache` keeps the engines.
"""
