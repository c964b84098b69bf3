"""Training: behaviour cloning, calibration (static layers, tau), two-stage distillation."""
