"""`mtad distill --kind features` on a tiny random target: seconds, no downloads.

The unrolled training forward must compute exactly what drafting computes (else training-time
test trains something decoding never runs); the loss falls; resume is bit-exact; the result loads
with `--draft DIR` and decodes.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import mtad
from conftest import tiny_llama
from mtad.config import SamplingConfig
from mtad.decoding.sampling import distributions
from mtad.distill import TrainSettings, distill
from mtad.distill.features import unrolled_outputs
from mtad.errors import ConfigError
from mtad.models import load_pair
from mtad.runtime.cache import CachedModel, FeatureDrafter
from test_distill import DATA, data_dir, target_dir  # noqa: F401 (fixtures)
from test_feature_draft import feature_draft

FEATURES = TrainSettings(steps=12, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2, checkpoint_every=6,
                         kind="features", depths=3)  # fmt: skip


def test_unrolled_training_forward_equals_drafting():
    """Depth k at slot s = the draft's output when drafting k - 1 tokens after a real context ending
    at slot s - k + 1 (the drafted tokens equal to the text)."""
    target = tiny_llama(seed=2, layers=3)
    draft = feature_draft(target, seed=4)
    sequence = torch.tensor([[0, 5, 7, 3, 9, 4, 11, 12, 6, 2, 8]])
    with torch.inference_mode():
        hidden = target(input_ids=sequence, output_hidden_states=True).hidden_states
        states = torch.cat([hidden[i] for i in draft.config.feature_layers], dim=-1)
        unrolled = unrolled_outputs(draft, sequence, torch.ones_like(sequence), states, depths=3)
    sampling = SamplingConfig(temperature=1.0)
    for real_end in range(1, 8):
        cached_target = CachedModel(target, 16)
        drafter = FeatureDrafter(draft, 16, cached_target)
        cached_target.forward(sequence[:, :real_end])  # the target has read all but the last context token
        distributions(drafter, sequence[:, : real_end + 1], sampling)
        for depth in (2, 3):
            slot = real_end + depth - 1
            distributions(drafter, sequence[:, slot : slot + 1], sampling)
            torch.testing.assert_close(
                drafter.outputs[:, slot], unrolled[depth - 1][:, slot], atol=1e-5, rtol=0
            )
        torch.testing.assert_close(
            drafter.outputs[:, : real_end + 1], unrolled[0][:, : real_end + 1], atol=1e-5, rtol=0
        )


def test_feature_distillation_learns_saves_and_decodes(target_dir, data_dir, tmp_path):  # noqa: F811
    losses: list[float] = []
    settings = replace(FEATURES, steps=40, checkpoint_every=20, draft_vocab=48, save_dtype="bfloat16")
    report = distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir,
                     on_step=lambda step, loss: losses.append(loss))  # fmt: skip
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert report["kind"] == "features" and len(report["heldout"]["acceptance_per_position"]) == 3
    # Held-out numbers need not improve here: 12 samples of a random model are too few to generalise.
    assert all(0.0 <= a <= 1.0 for a in report["heldout"]["acceptance_per_position"])
    curve = [json.loads(line) for line in (tmp_path / "run" / "heldout_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [20, 40]
    assert all(w.dtype == torch.bfloat16 for w in load_file(tmp_path / "run" / "model.safetensors").values())
    target, draft = load_pair(target_dir, tmp_path / "run", dtype="float32")
    assert (
        draft.model.config.model_type == "mtad_feature_draft" and len(draft.model.config.mtad_token_ids) == 48
    )
    for method in ("sd", "mtad", "mmtad", "specinfer"):
        result = mtad.generate(
            target.model, draft.model, "write a short poem", method=method, gamma=3, max_new_tokens=12,
            seed=0, tokenizer=target.tokenizer, eos_token_id=[],
        )  # fmt: skip
        assert len(result.tokens) == 12 and result.stats.drafted_tokens > 0


def test_feature_distillation_resumes_bit_exactly(target_dir, data_dir, tmp_path):  # noqa: F811
    distill(target_dir, tmp_path / "straight", FEATURES, DATA, data_dir=data_dir)

    def interrupt(step: int, loss: float) -> None:
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(target_dir, tmp_path / "broken", FEATURES, DATA, data_dir=data_dir, on_step=interrupt)
    distill(target_dir, tmp_path / "broken", FEATURES, DATA, data_dir=data_dir, resume=True)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "broken" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_feature_settings_are_validated(target_dir, data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--kind must be one of"):
        TrainSettings(kind="pixels")
    with pytest.raises(ConfigError, match="--depths must be >= 1"):
        TrainSettings(kind="features", depths=0)
    with pytest.raises(ConfigError, match=r"--draft-layers must be in \[1, 4\]"):
        distill(target_dir, tmp_path / "layers", replace(FEATURES, draft_layers=9), DATA, data_dir=data_dir)
    with pytest.raises(ConfigError, match=r"--feature-layers must be distinct integers in \[0, 4\]"):
        distill(
            target_dir, tmp_path / "run", replace(FEATURES, feature_layers="1,9"), DATA, data_dir=data_dir
        )


def test_instruction_set_2_makes_two_turn_samples_that_train(target_dir, tmp_path):  # noqa: F811
    """Also without a stored teacher (--teacher-top-k 0): the feature trainer makes its own, and the
    draft's ids are chosen by how often the target wrote them."""
    data = replace(DATA, instruction_set=2, train_samples=8, heldout_samples=4, teacher_top_k=0)
    settings = replace(FEATURES, steps=2, draft_vocab=32)
    report = distill(target_dir, tmp_path / "run", settings, data, data_dir=tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "data_manifest.json").read_text())
    assert manifest["instructions"]["generator"] == "mtad.distill.conversations"
    assert manifest["splits"]["train"]["overlap_with_mtbench_6grams"] == 0
    assert report["steps"] == 2 and report["draft_vocab"] == 32
    with pytest.raises(ConfigError, match="--teacher-top-k >= 1"):
        distill(target_dir, tmp_path / "tokens", TrainSettings(steps=1, batch_size=2, seq_len=64), data,
                data_dir=tmp_path / "data")  # fmt: skip
    from mtad.distill.conversations import conversations

    talks = conversations(8, 0)
    assert {len(t) for t in talks} == {1, 2} and len({t[0].split()[0] for t in talks}) >= 5  # kinds vary


def test_draft_heldout_script_compares_both_kinds(target_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import draft_heldout

    data = replace(DATA, train_samples=4, heldout_samples=4)
    distill(target_dir, tmp_path / "run", replace(FEATURES, steps=2), data, data_dir=tmp_path / "data")
    monkeypatch.setattr(sys, "argv", [
        "draft_heldout.py", "--data-dir", str(tmp_path / "data"), "--instruction-set", "1",
        "--heldout-samples", "4", "--gen-batch-size", "4", "--depths", "3", "--target", str(target_dir),
        "--drafts", f"{tmp_path / 'run'},{target_dir}", "--mtbench", "2", "--max-new-tokens", "6",
    ])  # fmt: skip
    draft_heldout.main()
    table = capsys.readouterr().out.splitlines()[-4:]
    assert [row.split(" | ")[0] for row in table] == ["| held-out", "| MT-Bench"] * 2
    assert all("| features |" in row for row in table[:2]) and all("| tokens |" in row for row in table[2:])
    assert all(row.count("| 1.000 |") == 3 for row in table[2:])  # the target as its own draft


def test_cli_trains_a_feature_draft_and_refuses_bad_input(target_dir, data_dir, tmp_path, capsys):  # noqa: F811
    from mtad.cli import main

    common = ["distill", "--target", str(target_dir), "--out", str(tmp_path / "run"),
              "--data-dir", str(data_dir), "--samples", "12", "--heldout-samples", "4",
              "--gen-batch-size", "4", "--max-new-tokens", "16", "--teacher-top-k", "16",
              "--batch-size", "2", "--seq-len", "32", "--kind", "features"]  # fmt: skip
    assert main([*common, "--steps", "2", "--depths", "2", "--feature-layers", "1,4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "features" and report["feature_layers"] == [1, 4]
    assert len(report["heldout"]["acceptance_per_position"]) == 2
    assert main([*common, "--steps", "3", "--resume"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--depths", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--depths must be >= 1" in error[0]


def test_a_trained_draft_grows_a_layer_and_starts_where_it_stopped(target_dir, data_dir, tmp_path):  # noqa: F811
    first = distill(target_dir, tmp_path / "one", replace(FEATURES, steps=4), DATA, data_dir=data_dir)
    grown = distill(target_dir, tmp_path / "two", replace(FEATURES, steps=2, draft_layers=2), DATA,
                    data_dir=data_dir, draft_dir=str(tmp_path / "one"))  # fmt: skip
    assert grown["initial_heldout"] == first["heldout"]  # the grown draft computes what the trained one did
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["layer_config"]["num_hidden_layers"] == 2


def test_draft_cost_script_times_every_variant(target_dir, capsys, monkeypatch):  # noqa: F811
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import draft_cost

    monkeypatch.setattr(sys, "argv", [
        "draft_cost.py", "--target", str(target_dir), "--layers", "1,2", "--heads", "8,0",
        "--dtypes", "float32", "--repeats", "1",
    ])  # fmt: skip
    draft_cost.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| float32 |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["1", "8"], ["1", "64"], ["2", "8"], ["2", "64"]]
