"""Remembered answers are the engine's answers: the same for pods the engine cannot tell
apart, never reused for a pod, namespace or config it could."""

from __future__ import annotations

import copy

from tests import hostile
from tests.support import CORPUS, load_case
from webhook.engine import inject
from webhook.engine.config import MeshConfig, from_mapping
from webhook.server.memo import Memo, encode

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def renamed(pod: dict, name: str) -> dict:
    other = copy.deepcopy(pod)
    other["metadata"]["name"] = name
    other["metadata"]["uid"] = f"uid-{name}"
    return other


def test_pods_of_one_replicaset_share_one_answer() -> None:
    memo = Memo()
    first = memo.inject(renamed(WEB, "web-a"), "shop", MeshConfig())
    second = memo.inject(renamed(WEB, "web-b"), "shop", MeshConfig())
    assert second is first
    assert memo.hits == 1
    fresh = inject(renamed(WEB, "web-b"), "shop", MeshConfig())
    assert (first[0].patch, first[1]) == (fresh.patch, encode(fresh))


def test_anything_the_engine_reads_makes_a_new_answer() -> None:
    memo = Memo()
    memo.inject(WEB, "shop", MeshConfig())
    annotated = copy.deepcopy(WEB)
    annotated["metadata"]["annotations"] = {"proxy.io/concurrency": "4"}
    labelled = copy.deepcopy(WEB)
    labelled["metadata"]["labels"] = {"proxy.io/inject": "false"}
    without_metadata = {"spec": WEB["spec"]}
    memo.inject(annotated, "shop", MeshConfig())
    memo.inject(labelled, "shop", MeshConfig())
    memo.inject(WEB, "kube-system", MeshConfig())
    memo.inject(WEB, "shop", from_mapping({"logLevel": "debug"}))
    result, _ = memo.inject(without_metadata, "shop", MeshConfig())
    assert memo.hits == 0
    assert result.patch[0]["path"] == "/metadata"


def test_large_pods_are_not_remembered() -> None:
    memo = Memo()
    big = hostile.env_and_ports()
    memo.inject(big, "shop", MeshConfig())
    memo.inject(big, "shop", MeshConfig())
    assert memo.hits == 0
    assert not memo.answers
