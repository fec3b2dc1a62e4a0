"""What a publish request must hold (``cachelink_agent.csi.volumes``), and which policies grant it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cachelink_agent import models
from cachelink_agent.csi import kubelet, mounts, volumes

KUBELET = Path("/var/lib/kubelet")
POD = kubelet.PodRef("team-a", "decode-0", "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", "engine")


def parse(**override: str) -> volumes.Volume:
    request = kubelet.publish_request(POD, "kv", "cachelink", KUBELET)
    context = dict(request.volume_context)
    context.update({k: v for k, v in override.items() if k not in ("volume_id", "target_path")})
    return volumes.parse(
        override.get("volume_id", request.volume_id),
        override.get("target_path", request.target_path),
        context,
        KUBELET,
    )


def test_a_kubelet_request_parses():
    volume = parse()
    assert (volume.namespace, volume.pod_name, volume.pod_uid) == ("team-a", "decode-0", POD.uid)
    assert (volume.cachelink, volume.service_account) == ("kv", "engine")
    assert volume.volume_id == kubelet.volume_handle(POD.uid, "cachelink") and len(volume.volume_id) == 68


def test_the_target_must_be_in_the_pods_own_folder():
    other = kubelet.target_path(KUBELET, "11111111-2222-4333-8444-555555555555", "cachelink")
    with pytest.raises(volumes.InvalidVolume, match="not inside the pod's folder"):
        parse(target_path=str(other))
    sneaky = f"{KUBELET}/pods/{POD.uid}/volumes/../../11111111-2222-4333-8444-555555555555/x"
    with pytest.raises(volumes.InvalidVolume, match="not inside the pod's folder"):
        parse(target_path=sneaky)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({volumes.POD_UID: "not-a-uid"}, "pod_uid"),
        ({volumes.POD_NAMESPACE: "Team_A"}, "namespace"),
        ({volumes.CACHELINK: "-kv"}, "cachelink"),
        ({"csi.storage.k8s.io/ephemeral": "false"}, "only ephemeral inline volumes"),
        ({"pool": "/dev/shm"}, "unknown volume attributes ['pool']"),
        ({"volume_id": "x" * 200}, "volume_id"),
    ],
)
def test_bad_fields_are_named(override, words):
    with pytest.raises(volumes.InvalidVolume, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse(**override)


def test_only_a_policy_of_the_pods_namespace_cachelink_and_uid_grants():
    volume = parse()
    grant = models.AttachPolicy(pod_uids=[POD.uid], namespace="team-a", cachelink="kv")
    assert volume.granted_by(grant)
    assert not volume.granted_by(grant.model_copy(update={"namespace": "team-b"}))
    assert not volume.granted_by(grant.model_copy(update={"cachelink": "other"}))
    assert not volume.granted_by(grant.model_copy(update={"pod_uids": []}))
    assert not volume.granted_by(models.AttachPolicy(pod_uids=[POD.uid])), "a policy naming no CacheLink"


def test_mountinfo_paths_are_unescaped():
    assert mounts._unescape(r"/var/lib/kubelet/pods/a\040b/mount") == "/var/lib/kubelet/pods/a b/mount"
