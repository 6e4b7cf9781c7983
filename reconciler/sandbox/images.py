"""The demo images, built without docker and pushed through the registry API.

Building is pure and reproducible: the same busybox binary always gives the
same layer tars (fixed order, mtime, owners), the same gzip bytes (mtime 0),
the same config (fixed ``created``) and so the same manifest digest.  Tests
can therefore pin digests, and ``up`` re-pushing is a no-op for the registry.

Layout of every image: one shared base layer (busybox, its applet links, the
entrypoint and the HTTP handler) and one tiny variant layer
(``/etc/demo/version`` and ``/etc/demo/mode``) read by the handler.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SandboxError

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200  # CREATED as a unix time
PORT = 8080
BUSYBOX = Path("/bin/busybox")
_SCRIPTS = Path(__file__).with_name("images")

APPLETS = ("sh", "ash", "cat", "date", "echo", "env", "expr", "grep", "hostname", "id", "kill",
           "ls", "nc", "printf", "ps", "sed", "sleep", "test", "[", "true", "false", "wget", "uname")


@dataclass(frozen=True)
class Variant:
    tag: str
    version: str
    mode: str  # healthy | unhealthy | flaky | crash: how /health behaves


VARIANTS = (
    Variant("v1", "v1", "healthy"),
    Variant("v2", "v2", "healthy"),
    Variant("v3-unhealthy", "v3", "unhealthy"),
    Variant("v4-flaky", "v4", "flaky"),
    Variant("v5-crash", "v5", "crash"),
)


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "size": len(self.data), "digest": self.digest}


@dataclass(frozen=True)
class BuiltImage:
    variant: Variant
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes  # the exact bytes to PUT; their sha256 is the image digest

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _tar(entries: list[tuple[str, str, bytes | str, int]]) -> bytes:
    """A tar of (path, kind, content-or-link-target, mode) with every varying field fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind, content, mode in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = MTIME, 0, 0, "", "", mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(content)
                tar.addfile(info)
            else:
                data = content if isinstance(content, bytes) else content.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def base_layer_tar(busybox: bytes, entrypoint: str, handler: str) -> bytes:
    entries = [("bin", "dir", b"", 0o755), ("etc", "dir", b"", 0o755), ("tmp", "dir", b"", 0o1777),
               ("bin/busybox", "file", busybox, 0o755),
               ("entrypoint.sh", "file", entrypoint, 0o755),
               ("bin/demo-handler", "file", handler, 0o755),
               ("etc/passwd", "file", "root:x:0:0:root:/:/bin/sh\n", 0o644),
               ("etc/group", "file", "root:x:0:\n", 0o644)]
    entries += [(f"bin/{applet}", "link", "busybox", 0o777) for applet in APPLETS]
    return _tar(entries)


def variant_layer_tar(variant: Variant) -> bytes:
    return _tar([("etc/demo", "dir", b"", 0o755),
                 ("etc/demo/version", "file", variant.version + "\n", 0o644),
                 ("etc/demo/mode", "file", variant.mode + "\n", 0o644)])


def docker_arch(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def build_image(variant: Variant, base_tar: bytes, arch: str, base_gz: bytes | None = None) -> BuiltImage:
    """Config, layers and manifest for one variant; pure.  ``base_gz`` saves re-gzipping."""
    tars = (base_tar, variant_layer_tar(variant))
    layers = (Blob(LAYER_TYPE, base_gz if base_gz is not None else _gzip(base_tar)),
              Blob(LAYER_TYPE, _gzip(tars[1])))
    config = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": ["/entrypoint.sh"],
            "Env": ["PATH=/bin", f"DEMO_VERSION={variant.version}", f"PORT={PORT}", "FAIL_AFTER=5"],
            "ExposedPorts": {f"{PORT}/tcp": {}},
            "Labels": {"org.opencontainers.image.version": variant.version,
                       "org.opencontainers.image.title": "demo-web",
                       "reconciler.demo.mode": variant.mode},
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
        "history": [{"created": CREATED, "created_by": "reconciler sandbox: busybox base"},
                    {"created": CREATED, "created_by": f"reconciler sandbox: variant {variant.tag}"}],
    }
    config_blob = Blob(CONFIG_TYPE, _canonical_json(config))
    manifest = _canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                                "config": config_blob.descriptor(),
                                "layers": [layer.descriptor() for layer in layers]})
    return BuiltImage(variant, config_blob, layers, manifest)


def build_all(busybox: bytes, arch: str, entrypoint: str, handler: str) -> tuple[BuiltImage, ...]:
    base = base_layer_tar(busybox, entrypoint, handler)
    base_gz = _gzip(base)
    return tuple(build_image(v, base, arch, base_gz) for v in VARIANTS)


def build_demo_images() -> tuple[BuiltImage, ...]:
    """The demo images from this machine's busybox and the packaged scripts."""
    if not BUSYBOX.exists():
        raise SandboxError(f"images: {BUSYBOX} is missing; install busybox-static (scripts/setup-system.sh)")
    return build_all(BUSYBOX.read_bytes(), docker_arch(),
                     (_SCRIPTS / "entrypoint.sh").read_text(), (_SCRIPTS / "demo-handler").read_text())


# --- pushing: the registry's HTTP API v2 -------------------------------------------


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as exc:
        if method == "HEAD" and exc.code == 404:
            return None
        body = exc.read()[:500].decode(errors="replace")
        raise SandboxError(f"registry: {method} {url} answered {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SandboxError(f"registry: {method} {url} failed: {exc}") from None


def _push_blob(base: str, repository: str, blob: Blob) -> None:
    head = _request("HEAD", f"{base}/v2/{repository}/blobs/{blob.digest}")
    if head is not None:
        head.close()
        return  # already there: content addressing makes re-pushing pointless
    with _request("POST", f"{base}/v2/{repository}/blobs/uploads/", data=b"") as resp:
        location = urllib.parse.urljoin(base, resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    url = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
    _request("PUT", url, data=blob.data, headers={"Content-Type": "application/octet-stream"}).close()


def push_image(registry: str, repository: str, image: BuiltImage) -> str:
    """Push blobs then the manifest under the variant's tag; return the manifest digest."""
    base = f"http://{registry}"
    for blob in (*image.layers, image.config):
        _push_blob(base, repository, blob)
    with _request("PUT", f"{base}/v2/{repository}/manifests/{image.variant.tag}", data=image.manifest,
                  headers={"Content-Type": MANIFEST_TYPE}) as resp:
        answered = resp.headers.get("Docker-Content-Digest")
    if answered != image.digest:
        raise SandboxError(f"registry: manifest of {repository}:{image.variant.tag} stored as {answered}, "
                           f"expected {image.digest}")
    return image.digest


def push_demo_images(registry: str, repository: str) -> dict[str, str]:
    """Build and push every variant; return ``{tag: "registry/repo:tag@sha256:..."}``."""
    refs = {}
    for image in build_demo_images():
        digest = push_image(registry, repository, image)
        refs[image.variant.tag] = f"{registry}/{repository}:{image.variant.tag}@{digest}"
    return refs
