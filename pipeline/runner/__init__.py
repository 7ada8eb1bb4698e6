"""The job runner: every job is a graph of stage tasks over addresses, run by one loop.

- ``tasks``: the plain-data addresses workers receive (``RegionTask``, ``EstimateTask``)
  and the job description they serve (``JobRef``).
- ``stage``: a stage's declaration (what runs, where, with which resources) and a call.
- ``loop``: the streaming loop: submits ready calls with bounded concurrency, settles
  results, applies retries, stops cleanly on SIGTERM; one or many job graphs at once.
- ``local`` and ``ray_executor``: the two executors behind one small interface
  (``has_room`` / ``submit`` / ``next``): in-process, and Ray tasks plus shared actor
  pools.

Workers are named by module path ("workers.region_worker:RegionWorker") and imported
only where they run, so the driver imports no worker code.
"""
