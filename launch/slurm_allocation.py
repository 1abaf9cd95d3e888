"""Inside a plain sbatch job, in every task: ``srun python launch/slurm_allocation.py hydra.run.dir=DIR
[overrides]`` (see slurm/ray_cluster.sbatch). Task 0 runs the Ray head and the driver, the others join."""

from distgan.cli import run_main
from distgan.launcher.slurm import run_in_allocation

if __name__ == "__main__":
    run_main(run_in_allocation)
