"""An age ciphertext (to a throwaway key nobody kept) as `reconciler secret set`
writes it, for tests that need an encrypted value that validates."""

import json

SEALED_YAML = "\"-----BEGIN AGE ENCRYPTED FILE-----\\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBLQ2VSVDY1VUNvaFFrRVMx\\nek5EdUl4ejE0ZWswQ3gyMjYyYytPZUVZaFZzCmw0RmhpWVlDVlQzcGV2bkJscVhm\\nTUpDNC9KeEo4ZzdmWFdiQzk3MmtiT1EKLT4gbUUvQjxmNSctZ3JlYXNlIGp8UiB5\\nWD5JLWJXWApjTTNvNDZRelZBc0tRRm5YNUVHb241N2Q5RVBKQWcydjczYmdhc0VI\\nT3VEeURsd0l6REZYZWxUNVp1VjVOMDFYCjVNWWgvdTEvV0dORXMyYzZYSXcKLS0t\\nIFI2SXAzZExlMlNoNkpYYTNTU3ZCQmNDRGNUY3B3cG9yOFc2NHNlUzJPZ2sK/kSe\\nyEvm8oLlxFl2E1nVDOV2u/6E0/QAI84R7/KA87LugfUqhRcJg9Ct6COOmCjgtw==\\n-----END AGE ENCRYPTED FILE-----\\n\""  # a YAML double-quoted string
SEALED = json.loads(SEALED_YAML)
