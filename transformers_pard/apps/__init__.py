"""The applications built on the library: the CLI, the benchmark, the plots and the embedded real model.

Nothing in the library imports this package; it imports the library's public API only.
"""
