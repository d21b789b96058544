"""No flag of the tools is silently moot beside another: every pair on each tool's probe command, by
construction.

tests/test_every_flag.py proves each flag alone changes what the user gets. A flag can still be dropped
when another is given (as `grid --nrow` was with `--single`): the user asked for both and got what one
of them gives. Here, for every two flags A and B of one tool that test_every_flag.py changes on the same
command (the base most of its probes share; and --ema, changed on that command's run with an EMA, with
each of them), the command with B and the command with B and A must differ in what the user gets, or
the second must be refused (exit code 2, one line naming A or B). A pair where A is meaningless beside
B by design is listed in MOOT with its reason. (Pairs on other commands, such as forget's
--drop-channels with what chooses channels, are in test_generate_flags_together.py.)
"""
import re
import shlex

import pytest

from test_every_flag import PROBES, outcome, places  # noqa: F401 (places: its fixture, here too)


def changed_flags() -> dict[str, dict[str, dict[str, str]]]:
    """tool -> {base command: {flag: what the probe adds to it}}, for the probes that add one flag with a
    value that is used, not refused, to their base command."""
    adding: dict[str, dict[str, dict[str, str]]] = {}
    for (tool, flag), probe in PROBES.items():
        added = probe.changed[len(probe.base):]
        if not probe.refused and probe.changed.startswith(probe.base) and added.startswith(f" {flag}"):
            adding.setdefault(tool, {}).setdefault(probe.base, {})[flag] = added
    return adding


def pairs(flags: dict[str, dict[str, dict[str, str]]]) -> list[tuple[str, str, str, str]]:
    """(tool, base, A, B): every two flags changed on the base most of the tool's probes share; and each
    flag changed on another base that is that one but for its checkpoint (--ema, on a run with an EMA),
    with each of those, on its own base (two such flags of one tool would not be paired with each other:
    today each tool has one, --ema)."""
    found = []
    for tool, bases in flags.items():
        main, adds = max(bases.items(), key=lambda kv: len(kv[1]))
        found += [(tool, main, a, b) for a in adds for b in adds if a != b]
        for base, own in bases.items():
            if base != main and CHECKPOINT.sub("", base) == CHECKPOINT.sub("", main):
                found += [(tool, base, x, y) for a in own for b in adds for x, y in ((a, b), (b, a))]
    return found


CHECKPOINT = re.compile(r"--checkpoint \S+")
FLAGS = changed_flags()
# PROBES holds one probe per (tool, flag), so each flag has one base and one value added to it
ADDS = {(tool, flag): added for tool, bases in FLAGS.items() for adds in bases.values()
        for flag, added in adds.items()}
PAIRS = pairs(FLAGS)
IDS = [f"{tool}-{a}-{b}".replace(" ", "-") for tool, _, a, b in PAIRS]
# (tool, A, B): why A has nothing to change once B is given. Each is a choice, visible in --help.
MOOT: dict[tuple[str, str, str], str] = {}


def test_the_pairs_cover_the_tools_with_two_or_more_flags_changed():
    tools = {tool for tool, *_ in PAIRS}
    assert {"generate grid", "generate interpolate", "generate arithmetic", "generate forget",
            "generate features", "fid", "prepare"} <= tools
    assert {(tool, "--ema") for tool in tools - {"prepare"}} <= {(tool, a) for tool, _, a, _ in PAIRS}
    assert not MOOT.keys() - {(tool, a, b) for tool, _, a, b in PAIRS}, "moot pairs that are not pairs"


@pytest.mark.parametrize("tool, base, a, b", PAIRS, ids=IDS)
def test_a_flag_given_beside_another_still_governs_what_it_names(tool, base, a, b, request, tmp_path,
                                                                 monkeypatch, capsys):
    where = request.getfixturevalue("places")
    if (tool, a, b) in MOOT:
        pytest.skip(MOOT[(tool, a, b)])
    adds = {flag: ADDS[(tool, flag)] for flag in (a, b)}
    code, with_b, err = outcome(tool, base + adds[b], where, tmp_path / "b", monkeypatch, capsys)
    assert code == 0, err
    again = outcome(tool, base + adds[b], where, tmp_path / "b_again", monkeypatch, capsys)[:2]
    assert again == (code, with_b), "the command with B is not deterministic: a change could not be seen"
    code, with_both, err = outcome(tool, base + adds[b] + adds[a], where, tmp_path / "ab", monkeypatch,
                                   capsys)
    lines = err.strip().splitlines()
    if code == 2:
        named = [f for f in (a, b) if re.search(rf"{re.escape(f)}(?![\w-])", lines[0] if lines else "")]
        assert len(lines) == 1 and named, f"refused, but not in one line naming {a} or {b}: {lines}"
        return
    assert code == 0, err
    assert with_both != with_b, f"{tool} {shlex.join([b, a])}: {a} changed nothing beside {b}"
