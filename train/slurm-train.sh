#!/bin/bash
# Pretrain or fine-tune as a SLURM job on N nodes x G GPUs, preemptible and self-requeueing.
# Run from the repository root:
#
#   mkdir -p logs && sbatch --nodes 2 train/slurm-train.sh pretrain --config train/mvlm-base.yaml \
#       --data runs/localized --init cl-tohoku/bert-base-japanese-v2 --out runs/mvlm
#
# COMMAND (pretrain or finetune) and its ARGS go to `layoutja COMMAND ARGS --resume`. srun starts
# one task per node; each runs torchrun with PROCS_PER_NODE workers, all meeting at a c10d
# rendezvous on MASTER_ADDR:MASTER_PORT. The recipe's global batch is fixed, so any N x G trains
# the same model. Edit the variables below or export them before sbatch (sbatch passes the
# environment on). The #SBATCH lines are defaults: options on the sbatch command line win.
#
# Stopping and requeueing. SLURM sends SIGUSR1 to this shell only, 300 s before the time limit
# (--signal=B:USR1@300); `scancel --signal=USR1 --batch JOBID` does the same by hand. The
# contract of `layoutja pretrain|finetune`: when any rank gets SIGTERM or SIGUSR1, all ranks
# agree on the next step boundary, write a checkpoint and exit with status 75. Getting the signal
# there, as checked on a real SLURM (tests/test_slurm.py):
# - srun runs in the background and this shell `wait`s, so that its trap runs at once.
# - The trap runs `scancel --signal=TERM $SLURM_JOB_ID`: SIGTERM to every process of the job's
#   steps on every node (not to this shell), the torchrun and its workers alike. Not SIGUSR1:
#   torchrun has no handler for it and would die, orphaning its workers. Not `kill -TERM` to
#   srun: srun takes SIGTERM as "cancel the step" and SIGKILLs the tasks at once.
# - torchrun forwards SIGTERM to each worker's process group and waits for them, here up to
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT s (torch's default, 30 s, kills a longer checkpoint). Every
#   process of a worker gets SIGTERM (from SLURM, and from torchrun's process-group signal), the
#   DataLoader's data processes too: those must not die of it, or the rank fails before it
#   checkpoints ("DataLoader worker ... is killed by signal: Terminated").
# - Once srun has exited, this shell runs `scontrol requeue` (allowed by --requeue): SLURM ends
#   this run and starts the job again from the top, after a wait of AuthInfo's cred_expire
#   (120 s by default), and `--resume` continues from the checkpoint, step for step. The log is
#   appended to (--open-mode=append), one run after the other.
# SIGTERM to this shell (scancel, or SLURM preempting the job) is passed on the same way but
# does not requeue: a cancelled job stays cancelled; a preempted one is requeued by SLURM when
# the partition says so (its processes get SIGTERM from SLURM and SIGKILL KillWait s later).
#SBATCH --job-name=layoutja-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=logs/train-%j.log

# Workers per node: the GPUs SLURM gave this node, else 1.
PROCS_PER_NODE=${PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
# The rendezvous host: the allocation's first node. Node names are not always host names: set
# MASTER_ADDR to an address every node reaches when they are not.
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" | head -n1)}
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
VENV=${VENV:-.venv}
# Seconds torchrun gives its workers to checkpoint and exit after SIGTERM before it SIGKILLs them
# (torch's default is 30): keep it under the warning time of --signal=B:USR1@300.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}

set -uo pipefail
: "${SLURM_JOB_ID:?run this with sbatch}"
case "${1:-}" in
    pretrain | finetune) ;;
    *) echo "usage: sbatch [OPTIONS] $0 pretrain|finetune ARGS..." >&2; exit 2 ;;
esac
: "${MASTER_ADDR:?no MASTER_ADDR (scontrol show hostnames gave none)}"

echo "$(date -Is) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NNODES node(s)" \
    "x $PROCS_PER_NODE process(es), rendezvous $MASTER_ADDR:$MASTER_PORT"

stop=""
on_signal() {  # $1: USR1 (requeue afterwards) or TERM
    stop=${stop:-$1}
    echo "$(date -Is) SIG$1: SIGTERM to the job's steps (the workers checkpoint and exit)"
    # Every process of every step (torchrun and its workers), not this shell. When SLURM itself
    # cancels or preempts the job, it has signalled them already (and the job may be gone).
    scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || [ "$1" = TERM ] ||
        echo "$(date -Is) scancel --signal=TERM $SLURM_JOB_ID failed" >&2
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# No --kill-on-bad-exit: after a signal, the first node whose workers have exited (status 75)
# must not get the others killed while they finish.
srun --nodes "$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" \
    "$VENV/bin/torchrun" --nnodes "$SLURM_NNODES" --nproc_per_node "$PROCS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$SLURM_JOB_ID" \
    -m layoutja "$@" --resume &
srun_pid=$!
# A trapped signal interrupts `wait`; wait again until srun has really exited.
while :; do
    wait "$srun_pid"
    status=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done
echo "$(date -Is) srun exited with status $status"

if [ "$stop" = USR1 ]; then
    echo "$(date -Is) requeueing job $SLURM_JOB_ID: the next run resumes from the checkpoint"
    trap - USR1 TERM  # the requeue ends this run: SLURM sends this shell SIGTERM
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
