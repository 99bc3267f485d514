"""Training: the epoch loop (one model, or all folds at once as one fold-batched model),
optimizers and schedules, augmentation, feature scaling, and the device and seed runtime."""
