"""Batch inference on the router app: the ``/v1/batch`` endpoint, OpenAI's Files and Batch APIs with
jobs that run as Ray actors and resume from storage, and the offline Ray Data pipeline behind
``ray-serve-cai batch run``."""
