"""Fuzzing the admission path with mutated corpus pods (tests/fuzz.py): 20,000 through
``review()`` as the server calls it, and a share through the real server over HTTPS.

Every answer must be an AdmissionReview for the request's uid, never an internal error;
an allowed patch must apply to the pod it was made for; the answer, its message and its
warnings stay within the bounds the API server passes on; and no review takes long enough
to look like a hang. Set FUZZ_SEED to explore other cases; a failure names its seed and case.
"""

from __future__ import annotations

import base64
import json
import os
import time

import jsonpatch
import orjson

from tests.fuzz import mutants
from tests.support import review
from webhook.engine.config import MeshConfig
from webhook.server.admission import BadRequest
from webhook.server.admission import review as review_body

SEED = int(os.environ.get("FUZZ_SEED", "10"))
IN_PROCESS = 20_000
OVER_HTTPS = 1_500
HANG_SECONDS = 2.0
"""Not a speed target (bench/hostile_pods.py measures those): a review this slow is stuck."""


def check(response: dict, body: bytes, answer: bytes, where: str) -> None:
    assert response["uid"] == "fuzz", where
    status = response.get("status", {})
    assert status.get("code") != 500, f"{where}: {status.get('message')}"
    assert len(answer) <= 2 * len(body) + 512 * 1024, where
    assert len(status.get("message", "")) <= 4096, where
    assert sum(map(len, response.get("warnings", []))) <= 4096, where
    if response["allowed"] and "patch" in response:
        patch = json.loads(base64.b64decode(response["patch"]))
        # The pod as sent, read again rather than deep-copied: two nestings of 260 levels
        # stacked are more than copy.deepcopy's recursion allows.
        sent = json.loads(body)["request"]["object"]
        try:
            jsonpatch.apply_patch(sent, patch, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise AssertionError(f"{where}: the patch does not apply: {exc}") from None


def encoded(pod: dict) -> bytes:
    return json.dumps(review(pod, "shop", uid="fuzz")).encode()


def test_mutated_reviews_are_answered_safely() -> None:
    config = MeshConfig()
    outcomes: dict[str, int] = {}
    for case, pod in enumerate(mutants(SEED, IN_PROCESS)):
        where = f"FUZZ_SEED={SEED} case {case}"
        body = encoded(pod)
        started = time.perf_counter()
        try:
            reviewed = review_body(body, config)
        except BadRequest as exc:
            # Only JSON nested deeper than the parser reads is not a review at all.
            assert "body is not JSON" in str(exc), f"{where}: {exc}"
            outcomes["bad request"] = outcomes.get("bad request", 0) + 1
            continue
        assert time.perf_counter() - started < HANG_SECONDS, where
        check(orjson.loads(reviewed.body)["response"], body, reviewed.body, where)
        outcomes[reviewed.reason] = outcomes.get(reviewed.reason, 0) + 1
    assert sum(outcomes.values()) == IN_PROCESS
    # The mutator reaches every kind of answer, or it is not testing much.
    assert {"injected", "invalid_pod", "invalid_annotation"} <= set(outcomes), outcomes


def test_mutated_reviews_over_https_get_no_server_error(webhook) -> None:
    for case, pod in enumerate(mutants(SEED + 1, OVER_HTTPS)):
        where = f"FUZZ_SEED={SEED + 1} case {case}"
        body = encoded(pod)
        response = webhook.client.post(
            webhook.url + "/mutate", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (200, 400), f"{where}: {response.status_code}"
        if response.status_code == 200:
            check(response.json()["response"], body, response.content, where)
        assert response.headers.get("connection") != "close", where
