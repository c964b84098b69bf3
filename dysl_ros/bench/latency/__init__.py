"""`python -m dysl_ros bench latency`: full depth vs DySL per backend and execution path,
in one run.

subjects: the model, observations and decision source timed; runners: the subject on each
backend and path; measure: the timings, counts and every figure below; report: the table,
the breakdown and the verdict on the targets; command: the CLI.

Paths (runners): `unit` walks the units on the host (TorchRunner(segments=False), ONNX
Runtime and TensorRT on a per-unit export): one launch per layer, adapter and controller,
one host read per controller asked. `segment` runs one launch per static segment
(TorchRunner(segments=True), ONNX Runtime and TensorRT on a per-segment export) and reads
the skip positions once per step. With torch on CUDA, `cuda-graph` replays a CUDA graph per
segment wherever its allow point is fixed at its end (full depth), else runs it eagerly.

For each backend the same observations go through full depth (skipping off) and DySL on
every path, all interleaved step by step. Reported per backend, path and mode: backbone and
whole-step latency (median, p90), their speedup, launches per step (embed + units or
segments + head, counted by a wrapper in a first pass that also warms up), host reads in
the backbone per step (inside the walk: a controller's answer, or a tensor a runner reads
into Python inside a segment call; at its end: the one read of the skip positions), and the
fraction of ideal, each path against its own full depth:

    ideal DySL backbone   = full-depth backbone x mean fraction of layers DySL runs
    fraction of ideal     = ideal / measured DySL backbone
    (whole step: ideal = full step - full backbone x (1 - that fraction))

On the unit path also a per-step breakdown of the backbone into layers, adapters and
controllers (each unit timed on its own, times how often the mode ran it), host overhead
(the same steps through units that return at once: the segment walk and the policy's own
work) and other (the rest: dispatch inside the backend, caches that are cold when units run
in sequence, the machine). The verdict checks each non-unit path against issue 19's
targets: launches = segments + 2, no host read inside the backbone and one at its end,
fraction of ideal >= 0.95 (ONNX Runtime) / 0.9 (torch), and better than the unit path.

The fraction of ideal and the breakdown use each step's best time over the repeats (the
least disturbed one, as timeit does; unit timings likewise), averaged over observations, so
that other processes on a shared machine do not decide them; the JSON also holds the same
figures from plain means (`fraction_of_ideal_mean`).

Backbone latency is the guided pass plus any verification re-run, and the layer fraction
and launches count the re-run too (as in `bench closed-loop`).

Decisions come from the real guided policy on observations recorded from the simulated
expert when a trained model is given (--model DIR, or models/default when it exists), and
from a decision trace otherwise (--trace PATH, or a synthetic one): a freshly built
default-size model with a calibrated layout, or a random-weight Llama-shaped backbone
(--scale llama7b on CUDA; --scale llama-tiny as a CPU smoke run). The output says which,
and which GPU variants (TensorRT, CUDA graphs) did not run and why.
"""
from .command import add_arguments, run
from .measure import measure, measure_paths, unit_samples
from .runners import PATHS, available_backends, path_runners
from .subjects import Subject, build_subject

__all__ = ['PATHS', 'Subject', 'add_arguments', 'available_backends', 'build_subject',
           'measure', 'measure_paths', 'path_runners', 'run', 'unit_samples']
