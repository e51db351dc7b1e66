"""SyncNet v2 (joonson/syncnet_python ``SyncNetModel.S``), the network behind Sync-C / Sync-D.

Module names and ``nn.Sequential`` indices are the reference's (``netcnnaud.0.weight``,
``netfclip.3.bias``, ...), because ``syncnet_v2.model`` is a plain state dict that the reference
copies in by name; 13,631,616 trainable parameters (metrics.md §4.1). The channel plan below is the
published architecture, not a choice.
"""

from __future__ import annotations

from torch import Tensor, nn

SYNCNET_EMBED_DIM = 1024  # S(num_layers_in_fc_layers=1024), the value every evaluation script uses
SYNCNET_CONV_DIM = 512  # width of both conv trunks' output (input to the FC heads)
SYNCNET_MFCC_COEFFS = 13  # audio input rows: 13 MFCC coefficients (python_speech_features default)
SYNCNET_MFCC_STEPS = 20  # audio input columns: 20 MFCC steps at 100 Hz = 0.2 s = 5 video frames at 25 fps
SYNCNET_FRAMES = 5  # video input: 5 consecutive colour frames
SYNCNET_FACE_SIZE = 224  # video input: 224x224 face crops (the lip trunk ends in a 6x6 conv)


def _fc_head() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(SYNCNET_CONV_DIM, SYNCNET_CONV_DIM),
        nn.BatchNorm1d(SYNCNET_CONV_DIM),
        nn.ReLU(),
        nn.Linear(SYNCNET_CONV_DIM, SYNCNET_EMBED_DIM),
    )


class SyncNet(nn.Module):
    """Two-stream audio/lip embedding network.

    * :meth:`audio_embedding`: MFCC window ``(B, 1, 13, 20)`` (int16-scale audio) -> ``(B, 1024)``.
    * :meth:`video_embedding`: BGR face frames ``(B, 3, 5, 224, 224)`` in raw [0, 255] -> ``(B, 1024)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, SYNCNET_CONV_DIM, kernel_size=(5, 4), padding=(0, 0)),  # 5x4 map -> 1x1
            nn.BatchNorm2d(SYNCNET_CONV_DIM),
            nn.ReLU(),
        )
        self.netfcaud = _fc_head()
        self.netfclip = _fc_head()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),  # 5 frames -> 1 step
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, SYNCNET_CONV_DIM, kernel_size=(1, 6, 6), padding=0),  # 6x6 map -> 1x1
            nn.BatchNorm3d(SYNCNET_CONV_DIM),
            nn.ReLU(inplace=True),
        )

    def audio_embedding(self, mfcc: Tensor) -> Tensor:
        """``(B, 1, 13, 20)`` MFCC windows -> ``(B, 1024)`` (reference ``forward_aud``)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(start_dim=1))  # (B, 512, 1, 1) -> (B, 512)

    def video_conv_features(self, frames: Tensor) -> Tensor:
        """``(B, 3, 5, 224, 224)`` -> the 512-d lip trunk output (reference ``forward_lipfeat``)."""
        return self.netcnnlip(frames).flatten(start_dim=1)  # (B, 512, 1, 1, 1) -> (B, 512)

    def video_embedding(self, frames: Tensor) -> Tensor:
        """``(B, 3, 5, 224, 224)`` BGR in [0, 255] -> ``(B, 1024)`` (reference ``forward_lip``)."""
        return self.netfclip(self.video_conv_features(frames))
