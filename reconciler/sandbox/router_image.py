"""An HAProxy image for the sandbox, built from this machine's Debian haproxy, without docker.

There is no Docker outside the sandbox hosts' engines and no internet, so
the image is assembled like the demo images (``sandbox.images``): one
layer holding ``/usr/sbin/haproxy`` and every shared library it loads
(what ``ldd`` names, the dynamic loader included), the minimal
``/etc/passwd`` and ``/etc/group``; a config whose entrypoint is the
binary and whose stop signal is ``SIGUSR1`` (HAProxy's soft stop: it
finishes the requests it holds).  Layer tars have every varying field
fixed, so the same binary always gives the same digest and ``up``
re-pushing is a no-op.

Two tags of the same binary (``TAGS``), differing only by a label, give two
digests: the fleet test changes a router's image from one to the other.
Pushed by ``sandbox up`` to ``REGISTRY/sandbox/haproxy``; ``reference``
says what each tag's pinned reference is (the same build, no push).
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from reconciler.errors import SandboxError
from reconciler.sandbox import images

REPOSITORY = "sandbox/haproxy"
BINARY = Path("/usr/sbin/haproxy")
TAGS = ("2.6-a", "2.6-b")  # the same HAProxy; the second is "a new image" for the replace test
_LDD_RE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def libraries(binary: Path = BINARY) -> tuple[str, ...]:
    """The absolute paths of the shared objects ``binary`` loads, the loader included (``ldd``)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SandboxError(f"router image: `ldd {binary}` failed ({exc}); install haproxy "
                           "(scripts/setup-system.sh)") from None
    return tuple(sorted({m.group(1) for line in out.splitlines() if (m := _LDD_RE.search(line))}))


def layer_tar(binary: bytes, libs: dict[str, bytes]) -> bytes:
    """The one layer: the binary, its libraries at the paths the loader looks in, the user files."""
    dirs = {"usr", "usr/sbin", "etc", "tmp", "var", "var/lib", "var/lib/haproxy", "run"}
    entries = [("usr/sbin/haproxy", "file", binary, 0o755),
               ("etc/passwd", "file", "root:x:0:0:root:/:/usr/sbin/nologin\n", 0o644),
               ("etc/group", "file", "root:x:0:\n", 0o644)]
    for path, data in libs.items():
        rel = path.lstrip("/")
        parts = rel.split("/")
        dirs |= {"/".join(parts[:i]) for i in range(1, len(parts))}
        entries.append((rel, "file", data, 0o755))
    entries += [(d, "dir", b"", 0o1777 if d == "tmp" else 0o755) for d in dirs]
    return images._tar(entries)


def build(tag: str, layer: bytes, arch: str, layer_gz: bytes | None = None) -> images.BuiltImage:
    """Config, layer and manifest for one tag; pure."""
    blob = images.Blob(images.LAYER_TYPE, layer_gz if layer_gz is not None else images._gzip(layer))
    config = {
        "architecture": arch, "os": "linux", "created": images.CREATED,
        "config": {
            "Entrypoint": ["/usr/sbin/haproxy"],
            "Cmd": ["-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"],
            "Env": ["PATH=/usr/sbin:/usr/bin:/bin", "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"],
            "StopSignal": "SIGUSR1",
            "Labels": {"org.opencontainers.image.title": "haproxy (Debian's package binary)",
                       "org.opencontainers.image.version": tag},
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [images.sha256_digest(layer)]},
        "history": [{"created": images.CREATED, "created_by": f"reconciler sandbox: haproxy {tag}"}],
    }
    config_blob = images.Blob(images.CONFIG_TYPE, images._canonical_json(config))
    manifest = images._canonical_json({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPE,
                                       "config": config_blob.descriptor(), "layers": [blob.descriptor()]})
    return images.BuiltImage(images.Variant(tag, tag, "router"), config_blob, (blob,), manifest)


@functools.lru_cache(maxsize=1)
def build_all() -> tuple[images.BuiltImage, ...]:
    """Every tag, from this machine's haproxy and its libraries (built once per process)."""
    if not BINARY.exists():
        raise SandboxError(f"router image: {BINARY} is missing; install haproxy (scripts/setup-system.sh)")
    libs = {path: Path(path).read_bytes() for path in libraries()}
    layer = layer_tar(BINARY.read_bytes(), libs)
    layer_gz = images._gzip(layer)
    return tuple(build(tag, layer, images.docker_arch(), layer_gz) for tag in TAGS)


def reference(registry: str, tag: str) -> str:
    """``registry/sandbox/haproxy:TAG@sha256:...`` for ``tag`` (what ``push`` stores)."""
    (image,) = [i for i in build_all() if i.variant.tag == tag]
    return f"{registry}/{REPOSITORY}:{tag}@{image.digest}"


def push(registry: str) -> dict[str, str]:
    """Build and push every tag; ``{tag: pinned reference}``."""
    return {image.variant.tag: f"{registry}/{REPOSITORY}:{image.variant.tag}@"
            f"{images.push_image(registry, REPOSITORY, image)}" for image in build_all()}
