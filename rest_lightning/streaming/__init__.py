"""Streaming generation (DESIGN §5): the ID-Context Cache and the chunk-by-chunk generator. Plain torch."""

from rest_lightning.streaming.cache import CacheConfig, CacheShape, IDContextCache
from rest_lightning.streaming.frames import FrameRule
from rest_lightning.streaming.generator import DenoiseStep, StreamConfig, StreamingGenerator, VideoChunk

__all__ = [
    "CacheConfig",
    "CacheShape",
    "DenoiseStep",
    "FrameRule",
    "IDContextCache",
    "StreamConfig",
    "StreamingGenerator",
    "VideoChunk",
]
