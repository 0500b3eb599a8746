"""Writes and state changes for files and jobs.

``state`` is the job state machine (every transition a guarded conditional UPDATE plus an
event); ``jobs`` creates jobs and resolves their hyperparameters; ``retry`` holds the
operator actions (retry as a new job, change priority); ``dispatch`` wakes workers for
queued jobs; ``files`` validates and stores uploads.
"""
