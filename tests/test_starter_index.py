"""tools/starter_index.py: how the `real` support is drawn."""

from types import SimpleNamespace

from conftest import load_script


def test_real_support_drawn_per_source_keeps_every_source_under_a_total_cap():
    si = load_script("tools/starter_index.py")
    items = ([SimpleNamespace(source="big", i=i) for i in range(100)]
             + [SimpleNamespace(source="people", i=i) for i in range(5)]
             + [SimpleNamespace(source="scans", i=i) for i in range(30)])
    picked = si._per_source(items, 10)
    counts = {src: sum(s.source == src for s in picked) for src in ("big", "people", "scans")}
    assert counts == {"big": 10, "people": 5, "scans": 10}
    assert len({id(s) for s in picked}) == len(picked)  # nothing twice
    first = picked[:12]  # a cap of 12 still holds all three sources, four of each
    assert {src: sum(s.source == src for s in first) for src in counts} == {"big": 4, "people": 4, "scans": 4}
