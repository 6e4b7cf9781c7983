"""adapters: each the only owner of one kind of I/O.

paramiko (the SSH adapters', and docker-py's, under them) imports invoke at
its top for a feature never used here: made lazy before any adapter imports
paramiko (``lazyimports``).
"""

from reconciler.adapters import lazyimports

lazyimports.defer("invoke")
