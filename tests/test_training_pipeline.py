"""
The training path at any size and GPU count, on the tiny toy world of conftest.py:
- the global batch: --batch_size is one optimizer step's samples over all processes, so stage 1's
  micro-batches with accumulation train what one batch trains, and stage 2's loss is eq. 2's mean
  over the whole batch's masked tokens however its micro-batches draw them (the two-process run:
  test_distributed.py);
- the input pipeline: DataLoader workers change nothing, every draw being a function of (seed, step);
- the memory and FLOP savings, each exact: the ALiBi bias laid out aligned (§3.2.1), eq. 1's LM head
  on the caption positions only (§3.1), VATT Audio's Linears cast once for sampling;
- the log a long run is steered by.
"""
import importlib.util
import re

import pytest
import torch
import torch.nn.functional as F

import stage1_caption
import stage2_audio
from conftest import TINY_STAGE1, TINY_STAGE2
from extract_features import load_features
from stage1_caption import TEMPLATE, load_converter
from utils import split_batch

STEP = re.compile(r"step (\d+)/\d+ \| loss (\d+\.\d{4})")


def run(stage, world, tmp_path, name, *extra):
    """A short training run of `stage` on the tiny world; returns its log and the trained weights."""
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--out_dir={tmp_path}/{name}"]
    tiny = TINY_STAGE1 if stage is stage1_caption else TINY_STAGE2
    source = f"--llm={world}/out/toy_llm" if stage is stage1_caption else f"--converter={world}/out/stage1.pt"
    stage.main(data + [source] + tiny + ["--max_steps=3", "--eval_interval=3", "--log_interval=1", *extra])
    ckpt = torch.load(tmp_path / name / ("stage1.pt" if stage is stage1_caption else "stage2.pt"), weights_only=True)
    return ckpt.get("trainable", ckpt.get("model"))


def test_micro_batches_train_as_one_batch(world, tmp_path, capsys):
    stage = stage1_caption
    whole = run(stage, world, tmp_path, "whole", "--batch_size=4")
    log_whole = capsys.readouterr().out
    parts = run(stage, world, tmp_path, "parts", "--batch_size=4", "--micro_batch=1")
    log_parts = capsys.readouterr().out
    assert "a global batch of 4 = 1 process x 4 accumulated micro-batches x 1" in log_parts
    # the loss is the mean over the whole batch's tokens however it is split: the same losses and weights
    assert STEP.findall(log_parts) == STEP.findall(log_whole) and len(STEP.findall(log_whole)) == 3
    for key in whole:
        assert torch.allclose(whole[key].float(), parts[key].float(), atol=1e-5), key


class StateConverter:
    """A stand-in Converter whose condition is a fixed random state per clip (its features' first value)."""

    def condition(self, feats, prompts, cut=False):
        g = torch.Generator().manual_seed(0)
        table = torch.randn(8, 3, 16, generator=g)
        return table[feats[:, 0, 0].long()], torch.ones(len(feats), 3, dtype=torch.long)


def test_3_2_2_eq_2_is_the_mean_over_the_global_batchs_masked_tokens():
    """Stage 2's micro-batches each draw their masks (masked_token_loss): each one's eq. 2, scaled by
    its masked count over the whole batch's (drawn ahead, masked_counts), sums to the cross-entropy
    over every masked token of the batch, as one draw over the whole batch would weigh them."""
    c = stage2_audio.ModelConfig(cond_dim=16, n_q=2, bins=8, codebook_dim=4, dim=16, n_multiway=1, n_plain=1, n_head=2,
                                 head_dim=8, dropout=0.0, max_len=64)
    torch.manual_seed(0)
    model = stage2_audio.audio_model(c, torch.randn(2, 8, 4)).eval()
    cfg = stage2_audio.Config(batch_size=4, mask_mean=0.75, mask_std=0.25, cond_dropout=0.5)
    feats = torch.arange(4.0)[:, None, None].expand(4, 2, 3)
    codes = torch.randint(0, 8, (4, 2, 10), generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss = stage2_audio.batch_loss(model, c.bins, StateConverter(), (feats, [""] * 4, codes, None, None), 7, cfg, (2, 2), 0, 1,
                                       0.0, cpu)
        token_losses = []
        for first in (0, 2):  # what each micro-batch draws and scores
            cond, cond_mask = StateConverter().condition(feats[first:first + 2], None)
            mask, null = stage2_audio.training_draw(2, (2, 10), stage2_audio.mask_generator(7, first, cpu), 0.75, 0.25,
                                                    0.5)
            logits = model(codes[first:first + 2].masked_fill(mask, c.bins), cond, cond_mask, null)
            token_losses.append(F.cross_entropy(logits[mask], codes[first:first + 2][mask], label_smoothing=0.1,
                                                reduction="none"))
    assert torch.allclose(loss, torch.cat(token_losses).mean(), atol=1e-6)
    counts = stage2_audio.masked_counts((2, 10), 7, cfg, 2, 0.0, cpu)
    assert [int(n) for n in counts] == [len(t) for t in token_losses]


def test_dataloader_workers_change_nothing(world, tmp_path, capsys):
    main = run(stage2_audio, world, tmp_path, "main", "--dropout=0.1")
    log_main = capsys.readouterr().out
    workers = run(stage2_audio, world, tmp_path, "workers", "--dropout=0.1", "--workers=2")
    assert STEP.findall(capsys.readouterr().out) == STEP.findall(log_main)
    # bit for bit: each step's data is a function of (seed, step)
    assert all(torch.equal(main[k], workers[k]) for k in main)


def test_a_batch_that_does_not_split_is_refused():
    assert split_batch(64, 16, 1) == (16, 4) and split_batch(64, 16, 4) == (16, 1) and split_batch(64, 0, 8) == (8, 1)
    assert split_batch(32, 64, 1) == (32, 1)  # a micro-batch larger than the share: the share
    with pytest.raises(SystemExit, match="does not split over 3 processes"):
        split_batch(64, 16, 3)
    with pytest.raises(SystemExit, match="not a whole number of --micro_batch=3"):
        split_batch(64, 3, 2)


def test_run_start_and_log_say_what_is_trained(world, tmp_path, capsys):
    run(stage2_audio, world, tmp_path, "log", "--batch_size=4", "--micro_batch=2")
    out = capsys.readouterr().out
    # the plan: the global batch, how it is split, its tokens (10 video + 24 text + 100 audio a sample), epochs
    assert re.search(r"each step: a global batch of 4 = 1 process x 2 accumulated micro-batches x 2 \| ~536 tokens \| "
                     r"3 steps = [\d.]+ epochs over \d+ training clips", out), out
    line = re.search(r"step 1/3 \| loss .*", out)[0]
    for what in (r"grad norm \d+\.\d{3}", r"\d+ ms/step \(\d+% data wait\)", r"[\d.]+ samples/s", r"[\d,]+ tok/s",
                 r"peak memory [\d.]+ GB"):
        assert re.search(what, line), (what, line)


@pytest.mark.parametrize("architecture", ["vatt", "cross-attn"])
def test_attention_bias_is_aligned(monkeypatch, architecture):
    """§3.2.1's ALiBi bias: every row starts a multiple of 8 elements apart, although 9 + 13
    positions are not a multiple of 8, and the values are those of the plain bias."""
    c = stage2_audio.ModelConfig(cond_dim=16, n_q=2, bins=8, codebook_dim=4, dim=16, n_multiway=1, n_plain=1, n_head=2,
                                 head_dim=8, dropout=0.0, max_len=64, architecture=architecture)
    torch.manual_seed(0)
    model = stage2_audio.audio_model(c, torch.randn(2, 8, 4)).eval()
    codes, cond = torch.randint(0, 9, (3, 2, 13)), torch.randn(3, 9, 16)
    cond_mask = torch.ones(3, 9, dtype=torch.long)
    cond_mask[0, :4] = 0
    biases, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        biases.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        aligned = model(codes, cond, cond_mask)
        assert biases and all(b.stride(-2) % 8 == 0 and b.shape[-1] % 8 != 0 for b in biases)
        monkeypatch.setattr(stage2_audio, "kernel_ready", lambda bias, like: bias.to(like.dtype).contiguous())
        assert torch.equal(model(codes, cond, cond_mask), aligned)


def test_caption_loss_runs_the_lm_head_on_caption_positions_only(world, monkeypatch):
    """Eq. 1 with logits on the last positions only (the captions end the left-padded sequences)
    equals eq. 1 over every position's logits."""
    conv = load_converter(world / "out" / "stage1.pt", torch.device("cpu"))
    feats = torch.stack([load_features(world / "features", f"test_0000{i}") for i in range(2)])
    prompts = [TEMPLATE, "a much longer instruction than the template is"]
    captions = ["a drum", "a high whistle blows twice"]
    kept, forward = [], conv.llm.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        kept.append(out.logits.shape[1])
        return out

    monkeypatch.setattr(conv.llm, "forward", spy)
    with torch.no_grad():
        loss_sum, n = conv(feats, prompts, captions)
        x, mask, positions, labels = conv._sequences(feats, prompts, captions)
        logits = forward(inputs_embeds=x, attention_mask=mask, position_ids=positions).logits[:, :-1]
    want = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")  # -100: ignored
    longest = max(len(conv.caption_ids(c)) for c in captions)
    assert kept == [longest + 1] and kept[0] < x.shape[1]
    assert n == sum(len(conv.caption_ids(c)) for c in captions)
    assert torch.allclose(loss_sum, want, rtol=1e-5), (loss_sum, want)


def test_sampling_casts_linears_once_as_autocast_would(monkeypatch):
    """On CUDA, stage2_audio.frozen stores VATT Audio's Linear weights in bf16 once; under bf16
    autocast that gives exactly what re-casting the float32 weights in every forward gives."""
    c = stage2_audio.ModelConfig(cond_dim=16, n_q=2, bins=8, codebook_dim=4, dim=16, n_multiway=1, n_plain=1, n_head=2,
                                 head_dim=8, dropout=0.0, max_len=64)
    torch.manual_seed(0)
    model = stage2_audio.audio_model(c, torch.randn(2, 8, 4)).eval().requires_grad_(False)
    codes, cond, cond_mask = torch.randint(0, 9, (3, 2, 16)), torch.randn(3, 8, 16), torch.ones(3, 8, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(codes, cond, cond_mask)
    monkeypatch.setattr(stage2_audio, "weights_dtype", lambda device: torch.bfloat16)  # as on CUDA
    cast = stage2_audio.frozen(model, torch.device("cpu"))
    assert cast.heads[0].weight.dtype == torch.bfloat16 and cast.multiway_layers[0].norm1[0].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cast(codes, cond, cond_mask), want)


def test_the_log_line_is_the_intervals_mean_and_counts_skipped_steps(tmp_path, capsys):
    """The training loss a line shows is the mean over its interval's applied steps (a skipped
    step's NaN left out, and counted)."""
    from types import SimpleNamespace

    from utils import TrainingLog

    log = TrainingLog(SimpleNamespace(tensorboard=False, out_dir=str(tmp_path), max_steps=10), torch.device("cpu"),
                      rank=0, world=1, name="stage2")
    for loss, applied in ((2.0, True), (float("nan"), False), (4.0, True)):
        log.add(samples=4, tokens=100, flops=1e9, loss=torch.tensor(loss), applied=applied)
    log.write(3, lr=1e-3, grad_norm=0.5)
    assert re.search(r"step 3/10 \| loss 3\.0000 \| lr 1\.00e-03 \| grad norm 0\.500 \| 1 skipped \|",
                     capsys.readouterr().out)


def test_tensorboard_flag_writes_events_or_says_what_is_missing(tmp_path):
    """--tensorboard: the log's rows and the validation loss as TensorBoard scalars in a folder per
    stage, out_dir/tensorboard/<stage>, or, without the optional tensorboard package, one line
    saying how to install it."""
    from types import SimpleNamespace

    from utils import TrainingLog

    cfg = SimpleNamespace(tensorboard=True, out_dir=str(tmp_path), max_steps=10)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(SystemExit, match="pip install tensorboard"):
            TrainingLog(cfg, torch.device("cpu"), rank=0, world=1, name="stage2")
        return
    log = TrainingLog(cfg, torch.device("cpu"), rank=0, world=1, name="stage2")
    log.add(samples=4, tokens=100, flops=1e9, loss=torch.tensor(2.0), applied=True)
    log.write(1, lr=1e-3, grad_norm=0.5)
    log.validation(1, 1.5)
    events = list((tmp_path / "tensorboard" / "stage2").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "val/loss" in scalars and "train/skipped_steps" in scalars
