"""Properties of the DiT (DESIGN §4.2, §5; issue 5): locality of modulation and cross-attention, reference
isolation, block causality, window positions, streaming-hook parity, LTX-Video parity. Float32 on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.models.attention import (
    AttentionPattern,
    LayerKV,
    SelfAttention,
    WindowKV,
    build_attention_plan,
)
from rest_lightning.models.dit import DiT, DiTConfig, count_parameters
from rest_lightning.models.ltx_dit_keymap import LTXWeightsError, load_ltx_transformer_weights
from rest_lightning.models.pretrained import build_dit
from rest_lightning.models.rope import RotaryEmbedding, grid_coords

CONF_DIT = Path(__file__).resolve().parents[2] / "conf" / "model" / "dit"
ATOL = 1e-5  # float32: a few ulps of O(1) activations through two blocks
B, C, H, W, A = 2, 8, 3, 4, 3  # batch, latent channels, grid, audio tokens per frame


def tiny_config(**overrides) -> DiTConfig:
    base = instantiate(OmegaConf.load(CONF_DIT / "dit_tiny.yaml"))
    return dataclasses.replace(base, latent_channels=C, audio_dim=16, **overrides)


def make_inputs(frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, C, frames, H, W, generator=g),
        torch.rand(B, frames, generator=g),
        torch.randn(B, frames, A, 16, generator=g),
        torch.randn(B, C, 1, H, W, generator=g),
    )


@pytest.fixture(scope="module")
def model() -> DiT:
    torch.manual_seed(0)
    return DiT(tiny_config()).eval()


# --- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONF_DIT.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_dit_yaml_builds_a_validated_config(path: Path) -> None:
    config = instantiate(OmegaConf.load(path))
    assert isinstance(config, DiTConfig) and config.width % config.num_heads == 0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"width": 60, "num_heads": 7}, "num_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"rope_theta": 0.0}, "rope_theta"),
    ],
)
def test_config_errors_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        DiTConfig(**overrides)


def test_dit_rest_on_meta_is_ltx_2b_with_audio_projection() -> None:
    """dit_rest has LTX-Video 2B's parameters, minus its caption projection, plus ours and the null tokens."""
    from diffusers import LTXVideoTransformer3DModel

    config = instantiate(OmegaConf.load(CONF_DIT / "dit_rest.yaml"))
    with torch.device("meta"):
        ours = DiT(config)
        ltx = LTXVideoTransformer3DModel()
    caption = count_parameters(ltx.caption_projection)
    extra = count_parameters(ours.audio_projection) + ours.null_audio.numel() + ours.null_ref.numel()
    assert count_parameters(ours) == count_parameters(ltx) - caption + extra
    assert 1.9e9 < count_parameters(ours) < 1.95e9


# --- module-level locality ------------------------------------------------------------------------------


def test_adaln_modulation_of_a_frame_depends_only_on_its_timestep(model: DiT) -> None:
    t = torch.rand(B, 5, generator=torch.Generator().manual_seed(1))
    t2 = t.clone()
    t2[:, 2] = 1.0 - t2[:, 2]
    block = model.transformer_blocks[0]
    before = block.modulation(model.time_embed(t)[0])
    after = block.modulation(model.time_embed(t2)[0])
    for name in ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp"):
        a, b = getattr(before, name), getattr(after, name)
        others = [0, 1, 3, 4]
        torch.testing.assert_close(a[:, others], b[:, others], rtol=0, atol=0)
        assert not torch.allclose(a[:, 2], b[:, 2]), name


def test_cross_attention_of_a_frame_depends_only_on_its_audio(model: DiT) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 4, H * W, 64, generator=g)
    audio = torch.randn(B, 4, A, 64, generator=g)
    audio2 = audio.clone()
    audio2[:, 1] = torch.randn(B, A, 64, generator=g)
    attn = model.transformer_blocks[0].attn2
    out, out2 = attn(x, audio), attn(x, audio2)
    torch.testing.assert_close(out[:, [0, 2, 3]], out2[:, [0, 2, 3]], rtol=0, atol=0)
    assert not torch.allclose(out[:, 1], out2[:, 1])


def test_rotary_scores_depend_only_on_relative_positions() -> None:
    rope = RotaryEmbedding(64, 10000.0, 20.0, 2048.0, 2048.0, 0.32, 32.0)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(6, 64, generator=g), torch.randn(6, 64, generator=g)
    pos_q, pos_k = torch.randn(6, 3, generator=g) * 4, torch.randn(6, 3, generator=g) * 4
    shift = torch.tensor([7.0, -3.0, 11.0])
    score = (rope(pos_q).apply(q) * rope(pos_k).apply(k)).sum(-1)
    shifted = (rope(pos_q + shift).apply(q) * rope(pos_k + shift).apply(k)).sum(-1)
    # float32 angles reach ~5e3 rad at the highest frequency (LTX-Video computes them in float32 too):
    # ~5e-4 rad of rounding, so scores of norm ~64 agree to ~1e-2, while a non-relative shift moves them O(1).
    torch.testing.assert_close(score, shifted, rtol=0, atol=1e-2)
    moved = (rope(pos_q + shift).apply(q) * rope(pos_k).apply(k)).sum(-1)
    assert (score - moved).abs().max() > 1.0


def test_windowed_attention_equals_dense_masked_attention() -> None:
    """Without a reference, window positions differ from absolute ones by a per-window shift only, so the
    gathered block-causal attention must equal one SDPA with the dense mask and absolute positions."""
    torch.manual_seed(4)
    attn = SelfAttention(64, 4, 1e-5).eval()
    # theta 10 keeps every angle small, so float32 rotary rounding (~1e-3 rad at LTX-Video's theta 1e4,
    # where angles reach 1.5e4 rad) does not hide the structure under test: gather, mask, positions.
    rope = RotaryEmbedding(64, 10.0, 20.0, 2048.0, 2048.0, 0.32, 32.0)
    frames = 8
    x = torch.randn(B, frames * H * W, 64)
    for pattern in (AttentionPattern.block_causal(2), AttentionPattern.block_causal(1, chunk_frames=2)):
        plan = build_attention_plan(pattern, frames, H, W, False, rope, -1.0, x.device)
        _, out = attn(None, x, plan)
        absolute = rope(grid_coords(torch.arange(frames), H, W))
        q, kv = absolute.apply(attn.queries(x)), attn.keys_values(x)
        mask = pattern.dense_mask(frames, H * W, 0)
        heads = lambda t: t.unflatten(-1, (4, -1)).transpose(1, 2)  # noqa: E731
        dense = torch.nn.functional.scaled_dot_product_attention(
            heads(q), heads(absolute.apply(kv.keys)), heads(kv.values), attn_mask=mask
        )
        expected = attn.to_out(dense.transpose(1, 2).flatten(-2))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=ATOL)


# --- whole-model properties -----------------------------------------------------------------------------


def _reference_states(model: DiT, *args) -> list[torch.Tensor]:
    states: list[torch.Tensor] = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: states.append(out[0])) for b in model.transformer_blocks
    ]
    try:
        model(*args)
    finally:
        for h in hooks:
            h.remove()
    return states


@pytest.mark.parametrize("pattern", [AttentionPattern.bidirectional(), AttentionPattern.block_causal(1)])
def test_reference_states_ignore_the_video(model: DiT, pattern: AttentionPattern) -> None:
    latents, t, audio, ref = make_inputs(4)
    other_latents, other_t, other_audio, _ = make_inputs(4, seed=9)
    before = _reference_states(model, latents, t, audio, ref, pattern)
    after = _reference_states(model, other_latents, other_t, other_audio, ref, pattern)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sink = model.encode_id_sink(ref)  # the streaming ID-Sink runs the very same path
    assert len(sink) == len(before)


@pytest.mark.parametrize("chunk_frames", [1, 2])
def test_block_causal_outputs_ignore_later_frames_and_audio(model: DiT, chunk_frames: int) -> None:
    latents, t, audio, ref = make_inputs(6)
    first_changed = 2 * chunk_frames  # frames from chunk 2 on change
    latents2, t2, audio2 = latents.clone(), t.clone(), audio.clone()
    latents2[:, :, first_changed:] += 1.0
    t2[:, first_changed:] = 1.0 - t2[:, first_changed:]
    audio2[:, first_changed:] *= -1.0
    causal = AttentionPattern.block_causal(window=3, chunk_frames=chunk_frames)
    out = model(latents, t, audio, ref, causal)
    out2 = model(latents2, t2, audio2, ref, causal)
    torch.testing.assert_close(out[:, :, :first_changed], out2[:, :, :first_changed], rtol=0, atol=0)
    assert not torch.allclose(out[:, :, first_changed:], out2[:, :, first_changed:])
    # The test can fail: the bidirectional teacher's early frames do see the change.
    bidir = AttentionPattern.bidirectional()
    assert not torch.allclose(
        model(latents, t, audio, ref, bidir)[:, :, 0], model(latents2, t2, audio2, ref, bidir)[:, :, 0]
    )


def test_positions_are_within_the_window() -> None:
    """One layer, block-causal W: chunk c >= W sees exactly what chunk W of the clip ``chunks c-W..c`` sees,
    at the same window positions, so its output is the same; absolute positions would move the sink."""
    torch.manual_seed(5)
    one_layer = DiT(tiny_config(num_layers=1)).eval()
    pattern = AttentionPattern.block_causal(2)
    latents, t, audio, ref = make_inputs(7)
    full = one_layer(latents, t, audio, ref, pattern)
    for c in (2, 4, 6):
        window = slice(c - 2, c + 1)
        alone = one_layer(latents[:, :, window], t[:, window], audio[:, window], ref, pattern)
        torch.testing.assert_close(full[:, :, c], alone[:, :, -1], rtol=1e-5, atol=ATOL)
    # Older chunks than the window do not matter to a one-layer model.
    latents2 = latents.clone()
    latents2[:, :, :3] += 1.0
    torch.testing.assert_close(
        full[:, :, 6], one_layer(latents2, t, audio, ref, pattern)[:, :, 6], rtol=0, atol=0
    )


def test_forward_chunk_with_cached_keys_equals_the_block_causal_forward(model: DiT) -> None:
    """The streaming hook: sink + up to W cached chunks, chunk by chunk, equals the full forward over the
    history with the windowed pattern, for N = W + 3 chunks (DESIGN §5 first invariant, model level)."""
    window, chunk_frames = 2, 2
    pattern = AttentionPattern.block_causal(window, chunk_frames)
    frames = (window + 3) * chunk_frames
    latents, t, audio, ref = make_inputs(frames)
    full = model(latents, t, audio, ref, pattern)
    sink = model.encode_id_sink(ref)
    history: list[list[LayerKV]] = []
    for c in range(window + 3):
        span = slice(c * chunk_frames, (c + 1) * chunk_frames)
        context = history[-window:]
        windows = [
            WindowKV(
                sink=sink[layer],
                context=LayerKV(
                    torch.cat([h[layer].keys for h in context], 1),
                    torch.cat([h[layer].values for h in context], 1),
                )
                if context
                else None,
                num_context_chunks=len(context),
            )
            for layer in range(len(sink))
        ]
        out = model.forward_chunk(latents[:, :, span], t[:, span], audio[:, span], windows, pattern)
        torch.testing.assert_close(out.velocity, full[:, :, span], rtol=1e-5, atol=ATOL)
        history.append(out.kv)


def test_dropping_audio_equals_no_audio(model: DiT) -> None:
    latents, t, audio, ref = make_inputs(2)
    pattern = AttentionPattern.bidirectional()
    dropped = model(latents, t, audio, ref, pattern, drop_audio=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], model(latents, t, None, ref, pattern)[0], rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(dropped[1], model(latents, t, audio, ref, pattern)[1], rtol=1e-5, atol=ATOL)


def test_activation_checkpointing_keeps_outputs_and_gradients() -> None:
    torch.manual_seed(6)
    plain = DiT(tiny_config())
    ckpt = DiT(tiny_config(activation_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    latents, t, audio, ref = make_inputs(2)
    pattern = AttentionPattern.block_causal(1)
    grads = []
    for m in (plain, ckpt):
        m(latents, t, audio, ref, pattern).square().mean().backward()
        grads.append(m.transformer_blocks[0].attn1.to_q.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# --- LTX-Video parity ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ltx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(7)
    ltx = LTXVideoTransformer3DModel(
        in_channels=C,
        out_channels=C,
        num_attention_heads=4,
        attention_head_dim=16,
        cross_attention_dim=64,
        num_layers=2,
        caption_channels=16,
    )
    folder = tmp_path_factory.mktemp("ltx") / "transformer"
    ltx.save_pretrained(folder)
    return folder


def test_ltx_weights_give_diffusers_block_and_model_outputs(ltx_folder: Path) -> None:
    from diffusers import LTXVideoTransformer3DModel

    ltx = LTXVideoTransformer3DModel.from_pretrained(ltx_folder).eval()
    ours = build_dit(tiny_config(pretrained=str(ltx_folder.parent), pretrained_audio_projection=True)).eval()
    frames = 3
    latents, t, _, _ = make_inputs(frames)
    caption = torch.randn(B, A, 16, generator=torch.Generator().manual_seed(8))
    audio = caption[:, None].expand(
        B, frames, A, 16
    )  # every frame gets the same context: global == frame-level
    theirs_blocks, ours_blocks = [], []
    hooks = [
        b.register_forward_hook(lambda _m, _i, o: theirs_blocks.append(o)) for b in ltx.transformer_blocks
    ]
    hooks += [
        b.register_forward_hook(lambda _m, _i, o: ours_blocks.append(o[1].flatten(1, 2)))
        for b in ours.transformer_blocks
    ]
    with torch.no_grad():
        expected = ltx(
            hidden_states=latents.permute(0, 2, 3, 4, 1).reshape(B, -1, C),
            encoder_hidden_states=caption,
            timestep=(t * 1000.0).repeat_interleave(H * W, dim=1),
            encoder_attention_mask=None,
            num_frames=frames,
            height=H,
            width=W,
            rope_interpolation_scale=(ours.config.rope_time_scale, ours.config.rope_space_scale,
                                      ours.config.rope_space_scale),
            return_dict=False,
        )[0]
        got = ours(latents, t, audio, None, AttentionPattern.bidirectional())
    for h in hooks:
        h.remove()
    for theirs_block, ours_block in zip(theirs_blocks, ours_blocks, strict=True):
        torch.testing.assert_close(ours_block, theirs_block, rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(got.permute(0, 2, 3, 4, 1).reshape(B, -1, C), expected, rtol=1e-5, atol=ATOL)


def test_ltx_load_reports_and_refuses_partial_loads(ltx_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = DiT(tiny_config(pretrained_cross_attention=False))
    report = load_ltx_transformer_weights(model, ltx_folder)
    assert "audio_projection.linear_1.weight" in report.reinitialised
    assert "transformer_blocks.0.attn2.to_q.weight" in report.reinitialised
    assert "caption_projection.linear_1.weight" in report.ignored
    assert "transformer_blocks.1.ff.proj_in.weight" in report.loaded

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ltx_folder / "config.json").read_text())
    state = load_file(ltx_folder / "diffusion_pytorch_model.safetensors")
    del state["transformer_blocks.1.attn1.to_k.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, broken / "diffusion_pytorch_model.safetensors")
    with pytest.raises(LTXWeightsError, match=r"(?s)extra\.weight.*transformer_blocks\.1\.attn1\.to_k\.bias"):
        load_ltx_transformer_weights(DiT(tiny_config()), broken)
    with pytest.raises(LTXWeightsError, match="num_layers"):
        load_ltx_transformer_weights(DiT(tiny_config(num_layers=3)), ltx_folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_ltx_transformer_weights(DiT(tiny_config()), tmp_path / "nowhere")


def test_pattern_and_cache_views_refuse_inconsistent_use(model: DiT) -> None:
    with pytest.raises(ValueError, match="kind"):
        AttentionPattern(kind="causal")
    with pytest.raises(ValueError, match="chunk_frames=2"):
        AttentionPattern.block_causal(1, chunk_frames=2).num_chunks(5)
    latents, t, audio, ref = make_inputs(2)
    sink = model.encode_id_sink(ref)
    keys = torch.zeros(B, 3 * H * W, 64)
    too_many = [WindowKV(s, LayerKV(keys, keys), num_context_chunks=3) for s in sink]
    with pytest.raises(ValueError, match="window=2"):
        model.forward_chunk(latents[:, :, :1], t[:, :1], audio[:, :1], too_many, AttentionPattern.block_causal(2))
    with pytest.raises(ValueError, match="bidirectional"):
        model.forward_chunk(latents[:, :, :1], t[:, :1], audio[:, :1], too_many, AttentionPattern.bidirectional())
    with pytest.raises(ValueError, match="None exactly when"):
        WindowKV(sink[0], None, num_context_chunks=1)
