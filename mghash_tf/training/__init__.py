"""Training: config, the stage interface (a stage runs on the full model or on a cached trunk),
the optimiser factory, callbacks and checkpoints. ``mghash_tf.training.train.train`` runs it."""
