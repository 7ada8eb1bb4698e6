"""S3Diff super-resolution: the model (``model.py``), its weights (``weights.py``), the
degradation estimator (``degradation.py``), colour correction (``color.py``) and the
Upscaler the region worker builds (``upscaler.py``).

Importing this package is cheap; torch, diffusers and peft load with the submodules.
"""
