"""What every golden pod gets is exactly what tests/golden/ holds: a change to a patch or a
bootstrap shows in review as a diff of those files (scripts/update-golden writes them)."""

from __future__ import annotations

from tests.golden import FOLDER, expected


def test_the_golden_files_are_what_the_engine_makes() -> None:
    wanted = expected()
    stale = [
        name
        for name, text in wanted.items()
        if not (FOLDER / name).exists() or (FOLDER / name).read_text() != text
    ]
    extra = sorted(p.name for p in FOLDER.glob("*.yaml") if p.name not in wanted)
    assert not stale and not extra, (
        f"stale: {stale}; no longer made: {extra}; run scripts/update-golden and review the diff"
    )


def test_every_injected_corpus_pod_and_each_mesh_config_variant_has_golden_files() -> None:
    names = {p.name for p in FOLDER.glob("*.injected.yaml")}
    assert "01-web-single.injected.yaml" in names
    assert {"mtls-permissive.injected.yaml", "cni-classic.injected.yaml"} <= names
    assert len(names) == len(list(FOLDER.glob("*.bootstrap.yaml"))) >= 30
