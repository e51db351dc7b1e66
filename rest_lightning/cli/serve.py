"""``rest-serve``: a live talking head in the browser (``conf/serve.yaml``, DESIGN §5, issue 15).

Builds the models and the reference exactly as ``rest-generate`` does (``generation.build_models``,
``build_generator``, ``resolution_of``, ``cli.generate.prepare_reference``), then serves the page and one
``StreamingGenerator`` per WebSocket session (``streaming/server.py``, ``streaming/session.py``) until Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError
from rest_lightning.sizes import SIZE_GROUPS, check_size, sizes_help, with_size_overrides

log = logging.getLogger(__name__)

SUMMARY = (
    "Serve a live talking head: rest-serve ckpt=STUDENT.ckpt vae_ckpt=VAE.ckpt ref=face.png, then open "
    "http://127.0.0.1:8765/ and press Start: the page sends your microphone (16 kHz) and paints the frames as "
    "they come, with latency and fps. Same model options as rest-generate; serve.host= (default 127.0.0.1), "
    "serve.port=, serve.max_sessions= (each session has its own cache). Without ckpt= a freshly initialised "
    "model of size=tiny|small|rest runs (noise). Sizes: "
)


def build_server(cfg: DictConfig):
    """The ``StreamServer`` of ``cfg`` (``conf/serve.yaml``), not yet listening."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from rest_lightning.cli.generate import prepare_reference
    from rest_lightning.generation import build_generator, build_models, resolution_of
    from rest_lightning.streaming.media import MediaError, image_to_tensor
    from rest_lightning.streaming.server import StreamServer, warm_up

    check_size(cfg)
    if OmegaConf.is_missing(cfg, "ref") or not cfg.ref:
        raise ConfigError("ref=... is required: the face every session animates (rest-serve --help)")
    try:
        config = instantiate(cfg.serve, _convert_="object")
    except InstantiationException as err:  # ServeConfig.__post_init__'s message is the cause
        raise ConfigError(str(err.__cause__ or err)) from None
    models = build_models(cfg)
    generator = build_generator(cfg, models)  # checks stream.* once, before any session
    side = resolution_of(cfg, generator, models)
    if models.stored is not None and models.stored.resolution not in (None, side):
        log.warning("resolution=%d differs from the %d px %s trained at", side, models.stored.resolution, cfg.ckpt)
    try:
        ref = image_to_tensor(prepare_reference(cfg.ref, side, cfg.ref_detector, cfg.ref_margin))
    except MediaError as err:
        raise ConfigError(str(err)) from None
    warm_up(generator, ref, config.warmup_chunks)
    audio = generator.audio_encoder.config
    return StreamServer(
        config,
        make_generator=lambda: build_generator(cfg, models),
        ref=ref,
        sample_rate=audio.sample_rate,
        fps=audio.fps,
        chunk_video_frames=generator.frame_rule.chunk_video_frames(1),
        lookahead_samples=audio.lookahead_samples,
    )


async def _serve_until_signal(server) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def bound(host: str, port: int) -> None:
        print(f"rest-serve: open http://{host}:{port}/ in a browser (Ctrl-C stops)", flush=True)

    await server.serve(stop, on_bound=bound)


def serve(cfg: DictConfig) -> None:
    """What ``rest-serve`` runs: serve until Ctrl-C / SIGTERM (open sessions are closed with 1001)."""
    server = build_server(cfg)
    # websockets logs every page request as a "rejected" handshake at INFO.
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve_until_signal(server))
    except OSError as err:  # the address is taken or cannot be bound
        host, port = cfg.serve.host, cfg.serve.port
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err} (serve.host=, serve.port=)") from None
    print("rest-serve: stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(
        "rest-serve", "serve", SUMMARY + sizes_help() + ".", serve, with_size_overrides(args), groups=tuple(SIZE_GROUPS)
    )


if __name__ == "__main__":
    sys.exit(main())
