"""The request lifecycle's transition table, driven state by state with no I/O (as h11's test_state.py)."""

from __future__ import annotations

import itertools

import pytest

from airflow_provider_grok.exceptions import GrokAuthError, GrokContentFilteredError, GrokServerError
from airflow_provider_grok.protocol import GeneratedImage, ImageGenerationResult
from airflow_provider_grok.record import Job, RequestState, lifecycle
from airflow_provider_grok.record.lifecycle import TRANSITIONS, IllegalTransitionError, advance

pytestmark = pytest.mark.sansio


def sent():
    return Job("t1-abc123-s00001", 0, 0, 2, "fp").record(1)


def in_state(state: RequestState):
    """A request brought to ``state`` by legal transitions only."""
    request = sent()
    path = {
        RequestState.SENT: [],
        RequestState.ANSWERED: [RequestState.ANSWERED],
        RequestState.STORED: [RequestState.ANSWERED, RequestState.STORED],
        RequestState.FILTERED: [RequestState.FILTERED],
        RequestState.FAILED: [RequestState.FAILED],
    }[state]
    for step in path:
        advance(request, step)
    return request


@pytest.mark.parametrize(("origin", "target"), list(itertools.product(RequestState, RequestState)))
def test_every_pair_of_states_is_allowed_exactly_when_the_table_says(origin, target) -> None:
    request = in_state(origin)
    if target in TRANSITIONS[origin]:
        advance(request, target)
        assert request.state is target
    else:
        with pytest.raises(IllegalTransitionError, match=f"{origin} -> {target} is not a transition"):
            advance(request, target)
        assert request.state is origin  # refused: nothing changed


def test_the_table_only_moves_forward_and_every_end_is_terminal() -> None:
    for origin, targets in TRANSITIONS.items():
        for target in targets:
            assert origin is None or lifecycle.PROGRESS[target] > lifecycle.PROGRESS[origin]
    assert {s for s, t in TRANSITIONS.items() if not t} == {RequestState.STORED, RequestState.FILTERED,
                                                             RequestState.FAILED}  # fmt: skip


def test_an_answer_cannot_be_recorded_twice_nor_a_stored_request_concluded() -> None:
    result = ImageGenerationResult(0, "m", [GeneratedImage(0, b64_json="x")], 1, None, ["g-1"], 0, 0, 0)
    request = sent()
    assert lifecycle.conclude(request, result, None) is lifecycle.After.STORE
    with pytest.raises(IllegalTransitionError):
        lifecycle.conclude(request, result, None)
    lifecycle.finish_storing(request)
    with pytest.raises(IllegalTransitionError):
        lifecycle.conclude(request, GrokServerError("late"), None)
    with pytest.raises(IllegalTransitionError, match="cannot store an image of a request in state stored"):
        lifecycle.add_stored(request, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (GrokContentFilteredError("refused", request_id="g-9"), RequestState.FILTERED),
        (GrokAuthError("bad key", status=401), RequestState.FAILED),
    ],
)
def test_an_error_ends_the_request_and_says_why(outcome, state) -> None:
    request = sent()
    assert lifecycle.conclude(request, outcome, None) is lifecycle.After.WRITE_RECEIPT
    assert request.state is state and request.error and outcome.message in request.error


def test_a_state_read_from_storage_that_this_release_does_not_know_counts_as_sent() -> None:
    assert RequestState.read("answered") is RequestState.ANSWERED
    assert RequestState.read("exploded") is RequestState.SENT  # the worst case: it may have been billed
    assert RequestState.read(None) is RequestState.SENT


def test_record_imports_no_threads_storage_sdk_airflow_or_http_library() -> None:
    """The rules are sans-IO: the executors bring threads, clocks, storage and HTTP (DESIGN.md, layers)."""
    import ast
    from pathlib import Path

    from airflow_provider_grok import record

    forbidden = {"threading", "asyncio", "time", "random", "boto3", "botocore", "airflow", "requests", "httpx"}
    for path in Path(record.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {name.split(".")[0] for name in names} & forbidden, path.name
        assert len(path.read_text().splitlines()) <= 300, f"{path.name}: one idea per module, a few hundred lines"
