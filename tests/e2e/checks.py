"""What the end-to-end scenarios assert and print: the gateway's call log against S3 and the manifest."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_grok.testing import SimulatorControl
from tests.e2e.deployment import Deployment

PRICE = 0.02  # the simulator bills $0.02 an image


def posts(sim: SimulatorControl, marker: str) -> list[dict[str, Any]]:
    return [c for c in sim.generation_calls() if marker in (c["prompt"] or "")]


def images(deployment: Deployment, prefix: str) -> dict[str, bytes]:
    return {k: deployment.read(k) for k in deployment.keys(prefix + "/") if k.endswith(".jpg")}


def explain(deployment: Deployment, dag_id: str, run_id: str) -> str:
    tis = deployment.task_instances(dag_id, run_id)
    states = [(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis]
    failed = [
        f"--- log of {task} [{index}] try {tried} ---\n"
        + deployment.task_log_tail(dag_id, run_id, task, map_index=index, attempt=tried)
        for task, index, state, tried in states
        if state not in ("success", "skipped")
    ]
    triggerer, scheduler = deployment.log_tail("triggerer", 30), deployment.log_tail("scheduler", 20)
    return "\n".join([str(states), *failed, f"--- triggerer ---\n{triggerer}", f"--- scheduler ---\n{scheduler}"])


def check_exactly_once(
    deployment: Deployment, sim: SimulatorControl, *, marker: str, prefix: str, prompts: int, kept: dict[str, bytes]
) -> dict[str, Any]:
    """What every kill scenario must show; returns the counts it printed."""
    calls = posts(sim, marker)
    billed = [c for c in calls if c["billed_ticks"]]
    per_prompt = {i: sum(1 for c in billed if c["prompt"].endswith(f" {i}")) for i in range(prompts)}
    kept_prompts = {int(k.rsplit("/", 1)[1].split("-")[0]) for k in kept}
    keys = deployment.keys(prefix + "/")
    manifest = deployment.manifest(prefix)
    cost = manifest["cost"]
    counts = {
        "prompts": prompts,
        "stored_before_kill": len(kept),
        "posts": len(calls),
        "posts_billed": len(billed),
        "repeated": len(billed) - prompts,
        "billed_usd": round(sum(c["billed_ticks"] for c in billed) / 1e10, 4),
        "manifest_usd": cost["usd"],
        "manifest_unanswered": cost["requests_unanswered"],
        "manifest_requests": cost["requests"],
    }
    print(f"\n{marker}: {json.dumps(counts)}")

    # Every prompt has exactly one object; the receipts were folded into the manifest and removed.
    assert sorted(keys) == sorted([f"{prefix}/{i}-0.jpg" for i in range(prompts)] + [f"{prefix}/manifest.json"])
    # No stored image was paid for twice: its prompt was never requested again and its bytes are unchanged.
    assert all(per_prompt[i] == 1 for i in kept_prompts), per_prompt
    assert {k: deployment.read(k) for k in kept} == kept
    # At most the requests in flight (max_concurrency = 2) were repeated.
    assert 0 <= counts["repeated"] <= 2, counts
    # The manifest records every request the gateway saw, and its cost is what was billed, the in-flight
    # ones named: an unanswered request may not have reached the gateway, so the bill lies between the
    # known cost and the known cost plus every unanswered request.
    assert len(calls) <= cost["requests"] <= len(calls) + cost["requests_unanswered"]
    assert cost["usd"] - 1e-9 <= counts["billed_usd"] <= cost["usd"] + PRICE * cost["requests_unanswered"] + 1e-9
    assert cost["requests_unanswered"] <= 2
    assert manifest["status"] == "complete"
    return counts
