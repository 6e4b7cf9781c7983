"""reconciler: make Docker hosts run what an environment repository says.

The data path reads one way: commit -> desired state -> plan -> actions ->
hosts -> outcome -> note in git.  Pure modules (``model``, ``schema``,
``plan``, ``health``, ``errors``) do no I/O; adapters (``ssh``, ``hosts``,
``source``, ``journal``) own theirs.
"""

__version__ = "0.1.0"
