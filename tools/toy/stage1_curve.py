"""
Stage 1's captions over training: a stage-1 run (stage1_caption.py, its options as given) that,
at each validation (every --eval_interval steps), also captions the validation clips and prints
how often the caption names each clip's source and its strike count. A diagnostic for the toy.

    python tools/toy/stage1_curve.py --seed=3 --out_dir=out/curve-seed3 --llm=out/curve-seed3/base_llm
    (the LLM first: python data/toy/llm.py --seed=3 --out=out/curve-seed3/base_llm)
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import stage1_caption  # noqa: E402
from data.toy.world import parse_caption  # noqa: E402
from extract_features import feature_files  # noqa: E402

N_CLIPS = 200


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = stage1_caption.parse_config(stage1_caption.Config, stage1_caption.PRESETS, argv)
    entries = [e for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == "val"]
    entries = entries[:N_CLIPS]
    feats = torch.stack([feature_files(cfg.features_dir).load_video(Path(e["video_path"]).stem) for e in entries])
    validate = stage1_caption.val_loss

    def val_loss_and_captions(model, *args):
        loss = validate(model, *args)
        model.eval()
        with torch.no_grad():
            parsed = [parse_caption(c) for c in model.caption(feats)[0]]
        model.train()
        class_acc = sum(p["class"] == e["class"] for p, e in zip(parsed, entries)) / len(entries)
        count_acc = sum(p["count"] == e["count"] for p, e in zip(parsed, entries)) / len(entries)
        print(f"captions of {len(entries)} validation clips: class {class_acc:.3f}, count {count_acc:.3f}", flush=True)
        return loss

    stage1_caption.val_loss = val_loss_and_captions
    stage1_caption.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
