"""Real nodes for the development cluster (issue 13): what they need built and installed.

So far: the Debian packages (``hack/install-node-packages.sh``), the node tools built from source with
the control plane (``kubelet``, ``kube-proxy``, containerd 2.x; ``cachelink_dev.devcluster.build``), a local
Debian base image and the product image from the unchanged ``Dockerfile`` (:mod:`.images`).
``cachelink real-nodes build`` runs all of it; nothing here is used by the KWOK cluster yet.
"""

from __future__ import annotations

from cachelink_dev.realnodes.images import BaseImage, ImageBuildError, ProductImage, context_digest

__all__ = ["BaseImage", "ImageBuildError", "ProductImage", "context_digest"]
