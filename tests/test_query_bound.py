"""benchmarks.query_bound: the per-scene best query, the fitted look at a window, and the tool on a tiny model."""
from __future__ import annotations

import pytest
import torch

from model_utils import tiny_model


def _row(seed: int):
    """An 8 x 8 feature map: channel 0 marks the target, channel 1 an object beside it, channel 2 is everywhere;
    the model's own logits say nothing (zero). The target is 16 x 16 pixels of a 32 x 32 image."""
    from benchmarks.query_bound import Row

    g = torch.Generator().manual_seed(seed)
    y, x = (int(v) for v in torch.randint(0, 4, (2,), generator=g))
    feats = torch.zeros(3, 8, 8)
    feats[0, y:y + 4, x:x + 4] = 1.0
    feats[1, y:y + 4, x + 4:x + 8] = 1.0                      # touches the target on its right
    feats[2] = 1.0
    target = torch.zeros(32, 32, dtype=torch.bool)
    target[4 * y:4 * y + 16, 4 * x:4 * x + 16] = True
    truth = feats[0] / feats[0].sum()
    return Row(own=torch.zeros(8, 8), features=feats, windows={"none": torch.zeros(8, 8), "truth-mask": truth},
               target=target, touched=True)


def test_a_look_at_the_target_learns_what_it_looks_like_and_no_look_learns_nothing():
    from benchmarks.query_bound import fit_look, score

    train, val = [_row(s) for s in range(12)], [_row(s) for s in range(100, 106)]
    look = fit_look(train, "truth-mask", steps=600, batch=4)
    everything, alone, touched = score(val, [look(r) for r in val])
    # (a fit on feature cells leaves the edges between cells a little off: 80 after 600 steps, 92 after 1,000)
    assert everything > 75 and touched == everything and alone == 0.0   # no target stands alone here
    blind = fit_look(train, "none", steps=600, batch=4)
    assert score(val, [blind(r) for r in val])[0] < 50


def test_the_best_query_of_one_scene_finds_its_target():
    from benchmarks.query_bound import best_query, score

    rows = [_row(s) for s in range(3)]
    assert score(rows, [best_query(r) for r in rows])[0] > 95


@pytest.mark.slow
def test_query_bound_runs_on_a_saved_model_and_refuses_a_list_rung(tmp_path, capsys):
    from benchmarks.query_bound import main

    tiny_model(seg_box_weight=1.0).save_pretrained(tmp_path / "m")
    main([str(tmp_path / "m"), "--image-size", "64", "--samples", "4", "--fit", "4", "--steps", "3"])
    out = capsys.readouterr().out
    assert "4 relation validation scenes" in out and "bound (best linear query per scene)" in out
    assert all(f"look at {w} (fitted on 4)" in out for w in ("none", "mask", "box", "truth-box", "truth-mask"))
    with pytest.raises(SystemExit, match="not a mask rung"):
        main([str(tmp_path / "m"), "--rung", "vp_colour"])
