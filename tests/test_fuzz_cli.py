"""`mtad generate` under generated flags and prompts: exit 0 with the text, or exit 2 with one error
line (argparse's usage lines above it for a flag it cannot parse); never a traceback.

The pair is the session's tiny model directories, loaded once: the loader is the one step not
fuzzed here (it takes no decoding setting), so each case costs a decode, not a load.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import mtad
from fuzz import FAST, FLOAT_EXTREMES, INT_EXTREMES, SLOW, characters
from mtad.cli import main

# Numbers as a user types them, at the extremes, and text that is no number at all.
numbers = st.one_of(
    st.sampled_from(FLOAT_EXTREMES).map(repr),
    st.sampled_from(INT_EXTREMES[:-3]).map(str),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True).map(repr),
    st.integers().map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0x10", "1_000", " 3 ", "", "9" * 5000]),
)
hostile = st.one_of(
    numbers, st.text(characters, max_size=12), st.sampled_from(["\ud800", "a\udfffb", "\x00"])
)
PLAUSIBLE = {
    "--method": st.sampled_from(mtad.METHODS),
    "--gamma": st.sampled_from(["1", "3", "auto"]),
    "--beam-width": st.sampled_from(["1", "2", "4"]),
    "--threshold": st.sampled_from(["0.5", "1", "5e-324", "1e-300"]),
    "--tree": st.sampled_from(["2,1", "1", "3,2,1"]),
    "--reference": st.sampled_from(["best", "max", "own"]),
    "--temperature": st.sampled_from(["0", "0.7", "1e308", "1e-45", "5e-324", "-0.0"]),
    "--top-k": st.sampled_from(["0", "3", str(2**70)]),
    "--top-p": st.sampled_from(["1", "0.9", "5e-324"]),
    "--max-new-tokens": st.integers(0, 4).map(str),
    "--seed": st.sampled_from(["0", "7", str(2**63 - 1)]),
    "--max-gamma": st.sampled_from(["32", "4"]),
    "--stop": st.sampled_from(["w5", "w7 w9"]),
}
FLAGS = sorted(PLAUSIBLE)
words = st.lists(st.sampled_from([f"w{i}" for i in range(2, 16)]), min_size=1, max_size=5).map(" ".join)


@st.composite
def argvs(draw) -> list[str]:
    """Plausible flags (most decode), one of them hostile half the time, and a prompt."""
    chosen = draw(st.lists(st.sampled_from(FLAGS), unique=True, max_size=6))
    values = {flag: draw(PLAUSIBLE[flag]) for flag in chosen}
    values.setdefault("--max-new-tokens", "3")
    if draw(st.booleans()):
        values[draw(st.sampled_from(FLAGS))] = draw(hostile)
    prompt = draw(st.one_of(words, words, hostile, st.integers(1, 20_000).map(lambda n: "w5 " * n)))
    switches = draw(st.lists(st.sampled_from(["--raw", "--json", "--without-replacement"]), unique=True))
    # `--flag=value`: a value like "-1e-300" is not mistaken for a flag; "--" ends the options.
    return [*(f"{flag}={value}" for flag, value in values.items()), *switches, "--", prompt]


@pytest.fixture(scope="module")
def run_generate(pair_dirs):
    """`run(argv) -> (exit code, stdout, stderr)` of `mtad generate` on the tiny pair."""
    target_dir, draft_dir = pair_dirs
    pair = mtad.load_pair(target_dir, draft_dir)

    def run(argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["generate", "--target", target_dir, "--draft", draft_dir, *argv])
            except SystemExit as exit_:  # argparse refuses what it cannot parse
                code = exit_.code
        return code, out.getvalue(), err.getvalue()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mtad.cli.generate.load_pair_from_args", lambda args, need_draft=True: pair)
        yield run


def check(run_generate, argv: list[str]) -> None:
    code, out, err = run_generate(argv)
    event(f"exit {code}")
    assert "Traceback" not in err and "Traceback" not in out
    if code == 0:
        return
    assert code == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err


@FAST
@given(argv=argvs())
def test_generate_exits_0_or_2_with_one_error_line(run_generate, argv):
    check(run_generate, argv)


@pytest.mark.slow
@SLOW
@given(argv=argvs())
def test_generate_exits_0_or_2_with_one_error_line_ten_thousand_cases(run_generate, argv):
    check(run_generate, argv)
