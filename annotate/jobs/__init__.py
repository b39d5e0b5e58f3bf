"""The job engine: a Run row per background job, its params, progress, log, metrics, heartbeat and cancel.

`engine.register(kind, validate, handle)` is how a package adds a run kind; `engine.start_run` checks the
params and enqueues through Django's Tasks API; `manage.py db_worker` executes. `params` holds the
checked-parameter helpers the kinds share. Below everything that defines a kind.
"""
