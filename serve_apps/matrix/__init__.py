"""Matrix chat ingress: ``MatrixInferenceBot`` answers ``!infer`` in Matrix rooms through the router.

Enabled by the ``matrix:`` section of the router app's args (``serve_apps.matrix.config``); needs the
``matrix`` extra (matrix-nio). Importing this package does not import matrix-nio.
"""
