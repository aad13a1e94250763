"""``ray-serve-cai bench``: every benchmark of ``loadtests/`` in one run, one results file, a table, plots.

``results`` is the results format (pydantic, used by the writer and by anyone reading a results file),
``registry`` names the benchmarks, ``runner`` runs them one at a time in a child process each,
``memory`` samples peak RSS from /proc, ``report`` writes the markdown table, ``plots`` the PNGs.
"""
