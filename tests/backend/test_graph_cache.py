"""GraphCache's memory of keys seen once (loom/backend/recorder.py): bounded, the most recent kept."""
from loom.backend import recorder
from loom.backend.recorder import GraphCache


def test_keys_seen_once_are_remembered_up_to_seen_kept(monkeypatch):
    """A key is recorded on its second sighting while it is among the SEEN_KEPT most recent keys seen once; an
    older one counts as new again (a server's prompt mixes seldom repeat: the memory does not grow with them)."""
    monkeypatch.setattr(recorder, "SEEN_KEPT", 3)
    cache = GraphCache(2)
    assert not any(cache.wants_recording(k) for k in range(5))
    assert list(cache.seen) == [2, 3, 4]
    assert cache.wants_recording(4)
    assert not cache.wants_recording(0) and list(cache.seen) == [3, 4, 0]
    cache.put(3, "graph")
    cache.put(4, "graph")
    cache.put(0, "graph")               # evicts 3: seen once more, recorded on the sighting after
    assert list(cache.entries) == [4, 0] and 3 not in cache.seen
    assert not cache.wants_recording(3) and cache.wants_recording(3)
