"""A demo image that answers a share of its requests with a 500: for a canary
aborted by the router's error counters, and the watch after the switch.

The stock ``v2`` variant (``images``) with one more layer: a handler that
answers ``/`` with ``500`` for ``$ERROR_PERCENT`` percent of requests (30 by
default; a service's ``env`` sets another) and ``/health`` with 200, so the
router's check keeps it UP and only its error counters tell.  Built the way
``images`` builds the stock variants (fixed bytes, pushed by digest), in the
stock repository, without changing the stock images.
"""

from __future__ import annotations

import json

from reconciler.sandbox import images

TAG = "v6-errors"
VARIANT = images.Variant(TAG, "v6", "healthy")
_STOCK_ROOT = '''/ | /version)
    respond "200 OK" "demo-web $VERSION" ;;'''
_FAILING_ROOT = '''/ | /version)
    if [ $((RANDOM % 100)) -lt "${ERROR_PERCENT:-30}" ]; then
        respond "500 Internal Server Error" "demo-web $VERSION failed this one"
    fi
    respond "200 OK" "demo-web $VERSION" ;;'''


def handler(stock: str) -> str:
    if _STOCK_ROOT not in stock:
        raise ValueError("the stock demo handler changed: update error_image")
    return stock.replace(_STOCK_ROOT, _FAILING_ROOT)


def build(base_tar: bytes, arch: str, stock_handler: str, base_gz: bytes | None = None) -> images.BuiltImage:
    """The variant's image: the stock layers plus the failing handler.  Pure."""
    stock = images.build_image(VARIANT, base_tar, arch, base_gz)
    extra = images._tar([("bin", "dir", b"", 0o755), ("bin/demo-handler", "file", handler(stock_handler), 0o755)])
    config = json.loads(stock.config.data)
    config["rootfs"]["diff_ids"].append(images.sha256_digest(extra))
    config["history"].append({"created": images.CREATED, "created_by": "reconciler sandbox: a handler failing a share"})
    config["config"]["Env"].append("ERROR_PERCENT=30")
    config_blob = images.Blob(images.CONFIG_TYPE, images._canonical_json(config))
    layers = (*stock.layers, images.Blob(images.LAYER_TYPE, images._gzip(extra)))
    manifest = images._canonical_json({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPE,
                                       "config": config_blob.descriptor(),
                                       "layers": [layer.descriptor() for layer in layers]})
    return images.BuiltImage(VARIANT, config_blob, layers, manifest)


def push(registry: str, repository: str) -> str:
    """Build and push it (a no-op when the registry has it); ``registry/repository:v6-errors@sha256:...``."""
    stock_handler = (images._SCRIPTS / "demo-handler").read_text()
    base = images.base_layer_tar(images.BUSYBOX.read_bytes(), (images._SCRIPTS / "entrypoint.sh").read_text(),
                                 stock_handler)
    built = build(base, images.docker_arch(), stock_handler)
    digest = images.push_image(registry, repository, built)
    return f"{registry}/{repository}:{TAG}@{digest}"
