"""S3Diff super-resolution: the model (``model.py``), the degradation estimator
(``degradation.py``), colour correction (``color.py``) and the Upscaler the region worker
builds (``upscaler.py``).

Its weights: where they live (``locations.py``), reading them without running pickled
code (``loading.py``), the checkpoints' layout and checks (``checkpoint.py``), the cached
prompt embeddings (``prompts.py``) and the whole-directory check (``check.py``). The
driver reaches the ``weights`` subcommand (``command.py``) and the pre-run check
(``preflight.py``) only as stages (``pipeline/job/weights.py``).

Importing this package is cheap; torch, diffusers and peft load with the submodules.
"""
