"""adapters: each the only owner of one kind of I/O.

paramiko (the SSH adapters', and docker-py's, under them) imports invoke at
its top, for ssh config's ``Match exec``, never used here: made lazy before
any adapter imports paramiko (``lazyimports``), so that invoke is loaded by
fabric, in the threads that open the hosts (``ssh.connect``), not by the
main thread's import of paramiko.
"""

from reconciler.adapters import lazyimports

lazyimports.defer("invoke")
