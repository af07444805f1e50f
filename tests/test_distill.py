"""`mtad distill` end to end on a tiny random Llama target: seconds, no downloads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import mtad
from mtad.cli import main
from mtad.distill import DataSettings, OutputDirError, TrainSettings, distill
from mtad.distill.data import Sample
from mtad.distill.kinds import make_batch
from mtad.distill.metrics import topk_kl
from mtad.distill.train import Position, next_indices
from mtad.errors import ConfigError, ModelLoadError, VocabularyMismatchError
from mtad.models import load_pair

VOCAB = 64
WORDS = "the a of to and is in it you that write explain list give about short poem story".split()
DATA = DataSettings(
    train_samples=12, heldout_samples=4, gen_batch_size=4, max_new_tokens=16, teacher_top_k=16
)


def _tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    names = ["<unk>", "<s>", "</s>"] + WORDS
    names += [f"w{i}" for i in range(len(names), vocab)]
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(names[:vocab])}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )


def _save_model(directory: Path, vocab: int = VOCAB, seed: int = 0, with_tokenizer: bool = True) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # peaked distributions, so there is something to learn
        model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(directory)
    if with_tokenizer:
        _tokenizer(vocab).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("target"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_loss_goes_down_and_the_draft_is_a_plain_model(target_dir, data_dir, tmp_path):
    losses: list[float] = []
    settings = TrainSettings(steps=40, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2, checkpoint_every=20)
    report = distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir,
                     on_step=lambda step, loss: losses.append(loss))  # fmt: skip
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert report["heldout"]["kl"] < report["initial_heldout"]["kl"]
    assert 0.0 <= report["heldout"]["acceptance"] <= 1.0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps"] == 40
    from transformers import AutoModelForCausalLM, AutoTokenizer

    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert draft.config.num_hidden_layers == 1 and draft.config.vocab_size == VOCAB
    assert AutoTokenizer.from_pretrained(tmp_path / "run").get_vocab() == _tokenizer(VOCAB).get_vocab()
    manifest = json.loads((data_dir / "data_manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 12 and manifest["generated_tokens"] > 0


def test_subset_draft_trains_saves_half_precision_and_decodes(target_dir, data_dir, tmp_path):
    losses: list[float] = []
    settings = TrainSettings(steps=30, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2,
                             checkpoint_every=10, draft_vocab=24, save_dtype="float16")  # fmt: skip
    report = distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir,
                     on_step=lambda step, loss: losses.append(loss))  # fmt: skip
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    # Held-out numbers stay finite although q = 0 outside the subset (KL on the renormalised p).
    # They need not improve here: 12 random-model samples cover only part of the held-out tokens.
    assert report["draft_vocab"] == 24 and 0.0 < report["heldout"]["subset_mass"] < 1.0
    assert 0.0 <= report["heldout"]["kl"] < float("inf")
    weights = _weights(tmp_path / "run")
    assert all(w.dtype == torch.float16 for w in weights.values())
    target, draft = load_pair(target_dir, tmp_path / "run")
    token_ids = draft.model.config.mtad_token_ids
    assert len(token_ids) == 24 and {0, 1, 2} <= set(token_ids) and draft.model.config.vocab_size == 25
    assert draft.model.config.eos_token_id == token_ids.index(2)  # special ids became draft ids
    result = mtad.generate(target.model, draft.model, "write a short poem", method="sd", max_new_tokens=12,
                           seed=0, tokenizer=target.tokenizer, eos_token_id=[])  # fmt: skip
    assert len(result.tokens) == 12 and result.stats.drafted_tokens > 0
    # A full-vocabulary draft can be the starting point of a subset draft; a subset draft keeps its own.
    warm = distill(target_dir, tmp_path / "warm", replace(settings, steps=2, draft_vocab=16), DATA,
                   data_dir=data_dir, draft_dir=str(target_dir))  # fmt: skip
    assert warm["draft_vocab"] == 16 and warm["draft_layers"] == 4
    with pytest.raises(ConfigError, match="already predicts 24 tokens"):
        distill(target_dir, tmp_path / "again", replace(settings, draft_vocab=16), DATA, data_dir=data_dir,
                draft_dir=str(tmp_path / "run"), overwrite=True)  # fmt: skip
    resumed = distill(target_dir, tmp_path / "run", replace(settings, steps=32), DATA,
                      data_dir=data_dir, resume=True)  # fmt: skip
    assert resumed["steps"] == 32 and resumed["draft_vocab"] == 24


def test_subset_loss_renormalises_the_teacher_over_what_the_draft_can_predict():
    teacher = torch.log_softmax(torch.randn(5, VOCAB), -1).topk(VOCAB)
    kept = teacher.indices < 40  # the draft predicts ids 0..39 only
    full = torch.empty(5, VOCAB).scatter_(-1, teacher.indices, teacher.values)  # teacher logp by id
    student = full[:, :40]  # the teacher restricted to the subset (softmax renormalises it)
    ids = teacher.indices.where(kept, 40)
    assert float(topk_kl(student, ids, teacher.values, kept)) == pytest.approx(0.0, abs=1e-4)
    assert float(topk_kl(torch.zeros(5, 40), ids, teacher.values, kept)) > 0.1


def test_draft_vocab_larger_than_the_vocabulary_is_refused(target_dir, data_dir, tmp_path):
    settings = TrainSettings(steps=1, batch_size=2, seq_len=32, draft_vocab=VOCAB + 1)
    with pytest.raises(ConfigError, match="--draft-vocab must be in"):
        distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir)


def test_resume_reproduces_an_uninterrupted_run(target_dir, data_dir, tmp_path):
    settings = TrainSettings(steps=6, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2, checkpoint_every=3)
    distill(target_dir, tmp_path / "straight", settings, DATA, data_dir=data_dir)

    def interrupt(step: int, loss: float) -> None:
        if step == 4:  # one step past the checkpoint at 3: that step's work is lost
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(target_dir, tmp_path / "broken", settings, DATA, data_dir=data_dir, on_step=interrupt)
    state = json.loads((tmp_path / "broken" / "checkpoint" / "trainer_state.json").read_text())
    assert state == {"step": 3, "epoch": 1, "cursor": 0}  # 3 steps x 4 samples = one epoch of 12
    resumed_steps: list[int] = []
    distill(target_dir, tmp_path / "broken", settings, DATA, data_dir=data_dir, resume=True,
            on_step=lambda step, loss: resumed_steps.append(step))  # fmt: skip
    assert resumed_steps == [4, 5, 6]
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_resume_refuses_changed_settings(target_dir, data_dir, tmp_path):
    settings = TrainSettings(steps=2, batch_size=4, seq_len=64, checkpoint_every=1)
    distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir)
    with pytest.raises(Exception, match="batch_size"):
        distill(target_dir, tmp_path / "run", TrainSettings(steps=3, batch_size=2, seq_len=64), DATA,
                data_dir=data_dir, resume=True)  # fmt: skip


def test_existing_directory_is_refused_unless_asked(target_dir, data_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    settings = TrainSettings(steps=1, batch_size=2, seq_len=32)
    for flags in ({}, {"resume": True}):
        with pytest.raises(OutputDirError, match="not a distillation checkpoint"):
            distill(target_dir, out, settings, DATA, data_dir=data_dir, **flags)
    distill(target_dir, out, settings, DATA, data_dir=data_dir, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    with pytest.raises(OutputDirError, match="--resume"):
        distill(target_dir, out, settings, DATA, data_dir=data_dir)


def test_draft_with_another_vocabulary_is_refused(target_dir, data_dir, tmp_path):
    other = _save_model(tmp_path / "other", vocab=VOCAB + 16, seed=3)
    with pytest.raises(VocabularyMismatchError):
        distill(
            target_dir,
            tmp_path / "run",
            TrainSettings(steps=1),
            DATA,
            data_dir=data_dir,
            draft_dir=str(other),
        )


def test_target_without_tokenizer_is_refused(tmp_path):
    bare = _save_model(tmp_path / "bare", with_tokenizer=False)
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        distill(bare, tmp_path / "run", TrainSettings(steps=1), DATA)


def test_cli_runs_and_reports_bad_input_in_one_line(target_dir, data_dir, tmp_path, capsys):
    common = ["distill", "--target", str(target_dir), "--out", str(tmp_path / "run"),
              "--data-dir", str(data_dir), "--samples", "12", "--heldout-samples", "4",
              "--gen-batch-size", "4", "--max-new-tokens", "16", "--teacher-top-k", "16",
              "--batch-size", "2", "--seq-len", "32"]  # fmt: skip
    assert main([*common, "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert main([*common, "--steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume"]) == 0


def test_topk_kl_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, VOCAB)
    top = torch.log_softmax(logits, -1).topk(VOCAB)
    assert float(topk_kl(logits, top.indices, top.values)) == pytest.approx(0.0, abs=1e-5)
    assert float(topk_kl(torch.zeros(5, VOCAB), top.indices, top.values)) > 0.1


def test_batches_walk_seeded_epochs_and_train_only_answer_positions():
    position = Position()
    first = next_indices(position, 5, 3, seed=0) + next_indices(position, 5, 3, seed=0)
    assert sorted(first[:5]) == list(range(5)) and (position.epoch, position.cursor) == (1, 1)
    sample = Sample(ids=torch.arange(10), start=3, topk_ids=torch.zeros(6, 2, dtype=torch.int32),
                    topk_logp=torch.zeros(6, 2, dtype=torch.float16))  # fmt: skip
    batch = make_batch([sample], seq_len=8)
    assert batch["columns"].tolist() == [3, 4, 5, 6] and batch["topk_ids"].shape == (4, 2)


def test_more_samples_only_add_shards(target_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtad.distill.data import prepare_data

    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(target_dir),
        AutoTokenizer.from_pretrained(target_dir),
    )
    small, _ = prepare_data(model, tokenizer, tmp_path, DATA, "t")
    first = (tmp_path / "train_00000.pt").stat().st_mtime_ns
    grown, _ = prepare_data(model, tokenizer, tmp_path, replace(DATA, train_samples=18), "t")
    assert len(small) == 12 and len(grown) == 18
    assert (tmp_path / "train_00000.pt").stat().st_mtime_ns == first
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(small, grown[:12], strict=False))
    with pytest.raises(Exception, match="other settings"):
        prepare_data(model, tokenizer, tmp_path, replace(DATA, max_new_tokens=8), "t")


def test_target_identity_ignores_the_transformers_release_that_saved_it(target_dir, tmp_path):
    import shutil

    from mtad.distill.data import target_fingerprint

    copy = Path(shutil.copytree(target_dir, tmp_path / "copy"))
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert target_fingerprint(copy) == target_fingerprint(target_dir)
    config["num_hidden_layers"] += 1  # a real change to the target is still seen
    (copy / "config.json").write_text(json.dumps(config))
    assert target_fingerprint(copy) != target_fingerprint(target_dir)


def test_layers_flag_is_validated():
    from mtad.distill.student import parse_layers
    from mtad.errors import ConfigError

    assert parse_layers(None, 30) == (0,) and parse_layers("0,-1", 30) == (0, 29)
    for bad in ("0,0", "30", "x"):
        with pytest.raises(ConfigError, match="--layers"):
            parse_layers(bad, 30)


def test_a_second_run_on_the_same_directory_is_refused(target_dir, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    with (out / ".mtad_distill.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputDirError, match="another mtad distill"):
            distill(target_dir, out, TrainSettings(steps=1), DATA)


def test_learning_rate_warms_up_then_cools_down_when_asked():
    from mtad.distill.train import learning_rate

    constant = TrainSettings(steps=10, lr=1.0, warmup_steps=2)
    assert [learning_rate(constant, s) for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]
    cooled = replace(constant, decay_steps=4)
    assert [learning_rate(cooled, s) for s in range(5, 10)] == [1.0, 1.0, 0.75, 0.5, 0.25]
    for bad in (-1, 11):
        with pytest.raises(ConfigError, match=f"--decay-steps must be in \\[0, --steps=10\\], got {bad}"):
            replace(constant, decay_steps=bad)


def test_a_cooldown_may_be_added_on_resume(target_dir, data_dir, tmp_path):
    """A long run at constant lr ends with a cooldown: --resume accepts (and applies) decay_steps."""
    settings = TrainSettings(steps=3, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=1, checkpoint_every=3)
    distill(target_dir, tmp_path / "run", settings, DATA, data_dir=data_dir)
    longer = replace(settings, steps=5, decay_steps=2)
    distill(target_dir, tmp_path / "run", longer, DATA, data_dir=data_dir, resume=True)
    marker = json.loads((tmp_path / "run" / "mtad_distill.json").read_text())
    assert marker["train"]["steps"] == 5 and marker["train"]["decay_steps"] == 2
