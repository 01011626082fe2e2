"""Starting many workers on one study: local processes, a SLURM job array (submitit), Ray tasks.

Every launcher runs the same worker, ``ablate study run SPEC --storage URL`` (worker.py), after
creating the study once; the database (Optuna's RDB storage beside the ``ablate_*`` tables) is the
only coordinator, so workers started by hand, by a scheduler or by Kubernetes mix freely.
"""
