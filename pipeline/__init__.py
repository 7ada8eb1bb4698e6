"""Driver side of the super-resolution pipeline: plan, track and publish.

Nothing in this package imports torch, diffusers or peft at module import; pixels are
handled by Ray tasks and actors (``workers/`` and the ``*_task`` functions here).
"""
