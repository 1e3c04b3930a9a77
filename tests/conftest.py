"""
Shared fixture: a tiny toy world and tiny trained checkpoints, built once per test session
(prepare -> extract -> stage 1 -> stage 2 on 6 train + 2 test clips, a few seconds on a CPU).
"""
import pytest

import extract_features
import stage1_caption
import stage2_audio
from data.toy import prepare

TINY_STAGE1 = ["--max_steps=2", "--eval_interval=1", "--eval_batches=1", "--batch_size=4",
               "--toy_layers=1", "--toy_width=32", "--toy_heads=2", "--warmup_steps=1"]
TINY_STAGE2 = ["--max_steps=2", "--eval_interval=1", "--eval_batches=1", "--batch_size=4",
               "--dim=32", "--n_multiway=1", "--n_plain=1", "--n_head=2", "--head_dim=16", "--warmup_steps=1"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    prepare.main([f"--out_dir={d}", "--n_train=6", "--n_test=2", "--workers=1"])
    data = f"--data_json={d}/v2a_instruction.json"
    assert extract_features.main([f"--input={d}/v2a_instruction.json", f"--out_dir={d}/features", "--num_workers=0"]) == 0
    stage1_caption.main([data, f"--features_dir={d}/features", f"--out_dir={d}/out"] + TINY_STAGE1)
    stage2_audio.main([data, f"--features_dir={d}/features", f"--converter={d}/out/stage1.pt",
                       f"--out_dir={d}/out"] + TINY_STAGE2)
    return d
