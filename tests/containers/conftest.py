"""The product image in real containers (podman + runc), the way the chart runs it: opt-in.

These run when the image of the current source exists (``cachelink real-nodes build``, root): the tests
look it up by the context digest, so a stale image is never tested (``CACHELINK_TEST_IMAGE`` names
another). Otherwise they skip and say why (fail under ``CACHELINK_REQUIRE_REAL_NODES=1``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

from cachelink_dev.realnodes.images import Podman


@pytest.fixture(scope="session")
def podman(real_node_part_missing: Callable[[str], NoReturn]) -> Podman:
    if os.geteuid() != 0 or shutil.which("podman") is None:
        real_node_part_missing("needs root and podman (hack/install-node-packages.sh)")
    return Podman()


@pytest.fixture(scope="session")
def image(product_image: str) -> str:
    """The image of the current source (``tests/conftest.py``'s ``product_image``)."""
    return product_image


class Containers:
    """Starts containers and removes every one it started."""

    def __init__(self, podman: Podman, image: str) -> None:
        self.podman, self.image, self.names = podman, image, []

    def run(self, *args: str, detach: bool = False) -> subprocess.CompletedProcess[str]:
        name = f"cachelink-test-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        cmd = ["podman", "run", "--name", name, *(["-d"] if detach else ["--rm"]), *args]
        return subprocess.run(
            cmd, env=self.podman.env(), capture_output=True, text=True, timeout=300, check=False
        )

    def podman_out(self, *args: str) -> str:
        done = subprocess.run(
            ["podman", *args], env=self.podman.env(), capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    def cleanup(self) -> None:
        for name in self.names:
            subprocess.run(
                ["podman", "rm", "-f", "-t", "0", name],
                env=self.podman.env(),
                capture_output=True,
                timeout=60,
                check=False,
            )


@pytest.fixture
def containers(podman: Podman, image: str) -> Iterator[Containers]:
    made = Containers(podman, image)
    yield made
    made.cleanup()
