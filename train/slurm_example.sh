#!/bin/bash
# SLURM: one recipe on 2 nodes x 4 GPUs, one torchrun per node (see train/README.md).
#   sbatch train/slurm_example.sh
#SBATCH --job-name=eqs-swin-t-ade
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the 4 GPU processes
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32           # data-loader workers: data.workers per GPU process
#SBATCH --time=24:00:00
set -euo pipefail
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# 8 GPUs x 2 images keeps the recipe's total batch of 16
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node 4 \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$head:29500" \
    -m eqsurgeon train train/recipes/upernet_swin_tiny_ade20k.toml --data /datasets/ade \
    --set data.batch_size=2 --set run.gpus=8 --out "runs/swin_t_ade_${SLURM_JOB_ID}" --seed 0
