"""No flag of the tools is silently moot beside another: every pair on each tool's probe command, by
construction.

tests/test_every_flag.py proves each flag alone changes what the user gets. A flag can still be dropped
when another is given (as `grid --nrow` was with `--single`): the user asked for both and got what one
of them gives. Here, for every two flags A and B of one tool that test_every_flag.py changes on the same
command (the base most of its probes share), the command with B and the command with B and A must
differ in what the user gets, or the second must be refused (exit code 2, one line naming A or B). A
pair where A is meaningless beside B by design is listed in MOOT with its reason. (Pairs on other
commands, such as forget's --drop-channels with what chooses channels, are in
test_generate_flags_together.py.)
"""
import re
import shlex

import pytest

from test_every_flag import PROBES, outcome, places  # noqa: F401 (places: its fixture, here too)


def changed_flags() -> dict[str, tuple[str, dict[str, str]]]:
    """tool -> (its base command, {flag: what the probe adds to it}), for the probes that add one flag
    with a value that is used, not refused, to the base command most of the tool's probes share."""
    adding: dict[str, dict[str, dict[str, str]]] = {}  # tool -> base -> flag -> added
    for (tool, flag), probe in PROBES.items():
        added = probe.changed[len(probe.base):]
        if not probe.refused and probe.changed.startswith(probe.base) and added.startswith(f" {flag}"):
            adding.setdefault(tool, {}).setdefault(probe.base, {})[flag] = added
    tools = {tool: max(bases.items(), key=lambda kv: len(kv[1])) for tool, bases in adding.items()}
    return {tool: (base, adds) for tool, (base, adds) in tools.items() if len(adds) > 1}


TOOLS = changed_flags()
PAIRS = [(tool, a, b) for tool, (_, adds) in TOOLS.items() for a in adds for b in adds if a != b]
# (tool, A, B): why A has nothing to change once B is given. Each is a choice, visible in --help.
MOOT: dict[tuple[str, str, str], str] = {}


def test_the_pairs_cover_the_tools_with_two_or_more_flags_changed():
    assert {"generate grid", "generate interpolate", "generate arithmetic", "generate forget",
            "generate features", "fid"} <= TOOLS.keys()
    assert not MOOT.keys() - set(PAIRS), "moot pairs that are not pairs"


@pytest.mark.parametrize("tool, a, b", PAIRS, ids=lambda x: x.replace(" ", "-"))
def test_a_flag_given_beside_another_still_governs_what_it_names(tool, a, b, request, tmp_path, monkeypatch,
                                                                 capsys):
    where = request.getfixturevalue("places")
    if (tool, a, b) in MOOT:
        pytest.skip(MOOT[(tool, a, b)])
    base, adds = TOOLS[tool]
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
