"""Metric networks match the layouts of their published weight files (keys, shapes, parameter counts)
and their input contracts. Big networks run on the meta device (shapes only, no memory or compute)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from rest_lightning.metrics.nets import FIDInceptionV3, InceptionI3d, IResNet, SyncNet
from rest_lightning.metrics.nets.fid_inception import FIDInceptionE
from rest_lightning.metrics.nets.i3d import i3d_temporal_steps

META = torch.device("meta")


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_fid_inception_state_dict_matches_torchvision_inception3_with_1008_classes() -> None:
    """pt_inception-2015-12-05 is a state dict of Inception3(num_classes=1008, aux_logits=False)."""
    with META:
        ours = FIDInceptionV3()
        reference = torchvision.models.inception_v3(
            weights=None, num_classes=1008, aux_logits=False, init_weights=False
        )
    assert _shapes(ours) == _shapes(reference)
    assert ours.state_dict()["fc.weight"].shape == (1008, 2048)


def test_fid_inception_gives_2048_pool3_features() -> None:
    with META:
        net = FIDInceptionV3().eval()
        assert net(torch.zeros(2, 3, 299, 299)).shape == (2, 2048)


def test_fid_inception_patched_pooling_differs_from_torchvision_blocks() -> None:
    """With the same random weights, the TF pooling patches change the output (so they are live):
    Mixed_7c's max pool vs average pool, and Mixed_5b's padding-excluding average."""
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    x = torch.rand(1, 3, 107, 107) * 2 - 1  # small input: the net is convolutional up to the pool
    with torch.no_grad():
        patched = net(x)
        net.Mixed_7c.pool = "tf_avg"
        avg_7c = net(x)
        net.Mixed_7c.pool = "max"
        torchvision_5b = torchvision.models.inception.InceptionA(192, pool_features=32).eval()
        torchvision_5b.load_state_dict(net.Mixed_5b.state_dict())
        h = torch.rand(1, 192, 9, 9)
        assert not torch.allclose(torchvision_5b(h), net.Mixed_5b(h))
    assert patched.shape == (1, 2048)
    assert not torch.allclose(patched, avg_7c)
    with pytest.raises(ValueError, match="pool"):
        FIDInceptionE(2048, pool="avg")


# piergiaj InceptionI3d key names (as in rgb_imagenet.pt / i3d_pretrained_400.pt), sampled across the net.
I3D_REFERENCE_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4f.b3b.bn.num_batches_tracked": (),
    "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def test_i3d_layout_matches_piergiaj_keys() -> None:
    with META:
        shapes = _shapes(InceptionI3d())
    for key, shape in I3D_REFERENCE_KEYS.items():
        assert shapes.get(key) == shape, key
    assert not any(k.startswith("logits.bn") for k in shapes)  # the head has a bias and no BatchNorm
    # 9 units per inception block (b0, b1a, b1b, b2a, b2b, b3b each conv+bn), 9 blocks, 3 stem units.
    convs = [k for k in shapes if k.endswith("conv3d.weight")]
    assert len(convs) == 9 * 6 + 3 + 1


def test_i3d_time_averaged_logits_and_minimum_length() -> None:
    with META:
        net = InceptionI3d().eval()
        assert net(torch.zeros(2, 3, 16, 224, 224)).shape == (2, 400)
        assert net.logits_over_time(torch.zeros(1, 3, 16, 224, 224)).shape == (1, 400, 1)
        assert net(torch.zeros(1, 3, 9, 224, 224)).shape == (1, 400)
        with pytest.raises(ValueError, match="at least 9 frames"):
            net(torch.zeros(1, 3, 8, 224, 224))
        with pytest.raises(ValueError, match="224x224"):
            net(torch.zeros(1, 3, 16, 112, 112))
    assert [i3d_temporal_steps(t) for t in (8, 9, 16, 17)] == [1, 2, 2, 3]


def test_syncnet_parameter_count_keys_and_shapes() -> None:
    with META:
        net = SyncNet().eval()
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert trainable == 13_631_616  # metrics.md §4.1, hand-counted from syncnet_python's layer list
        shapes = _shapes(net)
        # Sequential indices count ReLU/pool layers too: the last convs sit at index 18 in both trunks.
        assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3)
        assert shapes["netcnnaud.18.weight"] == (512, 256, 5, 4)
        assert shapes["netcnnaud.19.running_var"] == (512,)
        assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
        assert shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
        assert shapes["netfcaud.1.running_mean"] == (512,)
        assert shapes["netfclip.3.weight"] == (1024, 512)
        assert net.audio_embedding(torch.zeros(3, 1, 13, 20)).shape == (3, 1024)
        assert net.video_embedding(torch.zeros(3, 3, 5, 224, 224)).shape == (3, 1024)
        assert net.video_conv_features(torch.zeros(3, 3, 5, 224, 224)).shape == (3, 512)


@pytest.mark.parametrize(("arch", "blocks"), [("iresnet50", (3, 4, 14, 3)), ("iresnet100", (3, 13, 30, 3))])
def test_iresnet_layout(arch: str, blocks: tuple[int, ...]) -> None:
    with META:
        net = IResNet(arch).eval()
        shapes = _shapes(net)
        assert tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5)) == blocks
        assert shapes["fc.weight"] == (512, 512 * 7 * 7)
        assert shapes["features.running_mean"] == (512,)
        assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
        assert shapes["layer4.0.prelu.weight"] == (512,)
        assert "layer2.1.downsample.0.weight" not in shapes  # only a stage's first block downsamples
        assert net(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
        with pytest.raises(ValueError, match="112x112"):
            net(torch.zeros(1, 3, 113, 113))
