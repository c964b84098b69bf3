"""Training and calibration of every baseline and ablation (dysl-method.md section 4).

One module per method, each with a `make(job, name, out_dir)` (named by
the method registry, runtime.methods.METHODS, and resolved by make.maker):

- random_skip: q solved so that the expected layers run match DySL's mean executed layers
  (random-skip with identity adapters, random-skip-adapters with DySL's trained ones).
- flexidepth: routers + adapters (DySL's sizes) on the frozen backbone,
  L_task + alpha * (sum_l g_l)^2; alpha (--alpha) sets its layers.
- deer: an adapter per early exit (DySL's rank) under the VLA's frozen head; thresholds eta_i
  solved on demonstration observations so that a target share of steps exits at each stage
  (shares decay geometrically, as in DeeR, and average to DySL's mean executed layers).
- static_depth: keep the k layers with the lowest s_l, fine-tune them and a head with the
  task loss + output distillation from the full model; k = round(DySL's mean layers).
- ablations: DySL parts distilled jointly (no stage 1), or on a layout with only layer 0
  static; saved with save_dysl under <model_dir>/ablations/<name>/.

common holds the config, the one training loop and the evaluation they share; make runs
them all, each timed; command is the CLI, which gives every method DySL's training budget
(steps, batch size, batches per pass: dysl_budget) unless told otherwise.

Inputs are re-iterable batches of embedded hidden states `x` (B, T, C), or pairs
`(x, actions)` with demonstration chunks (B, H, D) in normalised units. Without actions the
task loss uses the full-depth teacher's chunk (train.dataset.EmbeddedBatches yields both).
`python -m dysl_ros train-baselines --model-dir M --demos D` makes everything (see `run`).
"""
from .ablations import train_dysl_ablation
from .command import add_arguments, main_distill_config, run
from .common import BaselineTrainConfig
from .deer import deer_shares, exit_differences, solve_deer_thresholds, train_deer
from .flexidepth import train_flexidepth
from .make import maker, mean_layers_run, train_all_baselines
from .random_skip import random_skip_expected_layers, save_random_skip, solve_random_skip_q
from .static_depth import keep_layers, train_static_depth

__all__ = ['BaselineTrainConfig', 'add_arguments', 'deer_shares',
           'exit_differences', 'keep_layers', 'main_distill_config', 'maker', 'mean_layers_run',
           'random_skip_expected_layers', 'run', 'save_random_skip', 'solve_deer_thresholds',
           'solve_random_skip_q', 'train_all_baselines', 'train_deer', 'train_dysl_ablation',
           'train_flexidepth', 'train_static_depth']
