"""distgan: data-parallel GAN training with Ray Train, submitit/SLURM, Hydra and TensorBoard."""

__version__ = "0.1.0"
