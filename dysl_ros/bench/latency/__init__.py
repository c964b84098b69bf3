"""`python -m dysl_ros bench latency`: full depth vs DySL latency per backend, in one run.

subjects: the model, observations and decision source timed; runners: the subject on each
backend; measure: the timings and every figure below; report: the table and the JSON;
command: the CLI.

For each backend (torch, onnxruntime, tensorrt where it imports) the same observations go
through two GuidedPolicy instances sharing one runner, interleaved step by step: full depth
(skipping off) and DySL. Reported per backend and mode: backbone and whole-step latency
(median, p90), their speedup, a per-step breakdown of the backbone into layers, adapters
and controllers (each unit timed on its own, times how often the mode ran it), host
overhead (the same steps through units that return at once: the segment walk and the
policy's own work) and other (the rest: dispatch inside the backend, caches that are cold
when units run in sequence, the machine), and the fraction of ideal:

    ideal DySL backbone   = full-depth backbone x mean fraction of layers DySL runs
    fraction of ideal     = ideal / measured DySL backbone
    (whole step: ideal = full step - full backbone x (1 - that fraction))

The fraction of ideal and the breakdown use each step's best time over the repeats (the
least disturbed one, as timeit does; unit timings likewise), averaged over observations, so
that other processes on a shared machine do not decide them; the JSON also holds the same
figures from plain means (`fraction_of_ideal_mean`).

Backbone latency is the guided pass plus any verification re-run, and the layer fraction
counts the re-run too (as in `bench closed-loop`).

Decisions come from the real guided policy on observations recorded from the simulated
expert when a trained model is given (--model DIR, or models/default when it exists), and
from a decision trace otherwise (--trace PATH, or a synthetic one): a freshly built
default-size model with a calibrated layout, or a random-weight Llama-shaped backbone
(--scale llama7b on CUDA; --scale llama-tiny as a CPU smoke run). The output says which.
"""
from .command import add_arguments, run
from .measure import measure, unit_samples
from .runners import available_backends, subject_runner
from .subjects import Subject, build_subject

__all__ = ['Subject', 'add_arguments', 'available_backends', 'build_subject', 'measure',
           'run', 'subject_runner', 'unit_samples']
