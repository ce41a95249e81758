# Sourced by the sbatch scripts in this folder: run a job step so that a SLURM signal checkpoints
# the run and requeues the job, which then resumes from its run dir.
#
# The scripts ask for `#SBATCH --signal=B:USR1@<seconds>`: SLURM sends SIGUSR1 to this batch shell
# that many seconds before the time limit (and a site may send it before preemption). The trap
# forwards it to the step (srun passes it on to its tasks); the trainer checkpoints at its next step
# boundary and exits; then the job is put back in the queue with `scontrol requeue`. SIGTERM (plain
# scancel, or SLURM's own preemption) is forwarded too, but never requeues: a user who cancels a job
# means it, and SLURM requeues jobs that it preempts itself.

# run_requeueable CMD...: start CMD in the background, wait for it while forwarding SIGUSR1/SIGTERM,
# requeue the job if SIGUSR1 arrived, and return CMD's exit status.
run_requeueable() {
    local step_pid status requeue=false
    trap 'requeue=true; echo "$(date -Is) SIGUSR1: checkpointing, then requeueing job $SLURM_JOB_ID"; kill -USR1 "$step_pid" 2>/dev/null' USR1
    trap 'echo "$(date -Is) SIGTERM: forwarding to the step"; kill -TERM "$step_pid" 2>/dev/null' TERM
    "$@" &
    step_pid=$!
    # `wait` returns early whenever a trapped signal arrives: keep waiting until the step is gone.
    while :; do
        wait "$step_pid"
        status=$?
        kill -0 "$step_pid" 2>/dev/null || break
    done
    trap - USR1 TERM
    if $requeue; then
        echo "$(date -Is) step exited with status $status; requeueing job $SLURM_JOB_ID (restart count ${SLURM_RESTART_COUNT:-0})"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}
