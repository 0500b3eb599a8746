"""Writes and state changes for files and jobs.

``state`` holds the state machine (lead-owned), ``jobs`` job creation and hyperparameter
resolution, ``files`` upload validation and storage.
"""
