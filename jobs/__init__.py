"""Slurm launcher layer: sweep expansion (``jobs.sweep``) and sbatch rendering (``jobs.render``).

The command-line entry point is ``python -m megaprompt.launch``; ``jobs/template.sbatch`` is the one
template every job (single run, multi-node run, job array) is rendered from.
"""
