"""Protocol v2's face track (issue 17): SyncNet crop of the dlib track, dlib68 CSIM points, dlib identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.protocol import load_protocol
from eval.scoring import FaceTrack, face_track, five_points, sync_video, template_landmarks
from rest_lightning import faces

pytestmark = pytest.mark.skipif(not faces.available(), reason="needs the faces extra (dlib, face_recognition_models)")


@pytest.mark.parametrize("name", ["hdtf_v2", "mead_v2"])
def test_v2_protocols_use_the_syncnet_crop_dlib_points_and_identity(name) -> None:
    v2, v1 = load_protocol(name), load_protocol(name.replace("v2", "v1"))
    assert (v2.sync.crop, v2.csim.landmarks, v2.identity.dlib, v2.needs_faces) == ("syncnet", "dlib68", True, True)
    assert (v1.sync.crop, v1.csim.landmarks, v1.identity.dlib, v1.needs_faces) == ("protocol", "template", False, False)


def test_face_track_sync_crop_and_points_on_a_real_face() -> None:
    import cv2
    import skimage.data

    protocol = load_protocol("hdtf_v2")
    photo = cv2.resize(skimage.data.astronaut()[40:300, 110:370], (256, 256), interpolation=cv2.INTER_AREA)
    blank = np.full_like(photo, 128)
    frames = np.stack([photo, photo, blank] + [photo] * 11)  # frame 2 has no face: interpolated
    track = face_track(frames, protocol)
    assert track.detected.tolist() == [True, True, False] + [True] * 11
    np.testing.assert_allclose(track.boxes[2], track.boxes[1])
    crops = sync_video(frames, track, protocol, torch.device("cpu"))
    assert crops.shape == (3, 14, 224, 224)
    points = five_points(frames[:1], track.boxes[:1])[0]  # (5, 2): eyes above the nose above the mouth
    assert points[0, 0] < points[1, 0] and points[:2, 1].max() < points[2, 1] < points[3:, 1].min()
    # v1 keeps the protocol frame for SyncNet and the template for CSIM
    v1 = load_protocol("hdtf_v1")
    assert sync_video(frames, None, v1, torch.device("cpu")).shape == (3, 14, 256, 256)
    assert template_landmarks(256, v1.csim.template_fraction).shape == (5, 2)


def test_face_track_without_any_face_falls_back_to_the_nominal_box() -> None:
    protocol = load_protocol("smoke_v2")
    track: FaceTrack = face_track(np.full((3, 32, 32, 3), 128, np.uint8), protocol)
    assert not track.detected.any()
    side = 32 * protocol.csim.template_fraction
    np.testing.assert_allclose(track.boxes[0], [16 - side / 2, 16 - side / 2, 16 + side / 2, 16 + side / 2])
