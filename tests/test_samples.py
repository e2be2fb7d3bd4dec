"""The sample file format: streaming writer, labels <-> spans, the documented loader."""

import json

import numpy as np
import pytest

from longctx.concat.samples import (IGNORE_INDEX, SampleWriter, labels_to_spans, open_samples,
                             spans_to_labels)


def _random_sample(rng, n):
    ids = rng.integers(0, 128256, n)
    labels = np.full(n, IGNORE_INDEX)
    for _ in range(int(rng.integers(0, 4))):
        s = int(rng.integers(0, n))
        e = int(rng.integers(s, n + 1))
        labels[s:e] = ids[s:e]
    return ids, labels


def test_round_trip_random_access_and_bounded_row_groups(tmp_path):
    rng = np.random.default_rng(0)
    ref = [_random_sample(rng, int(rng.integers(1, 300))) for _ in range(40)]
    with SampleWriter(tmp_path / "s.parquet", group_tokens=500) as w:
        for i, (ids, labels) in enumerate(ref):
            w.write(ids, labels, sample_id=f"x-{i}", stage="x", n_tokens=len(ids), doc_ids=["a", "b"])
    samples = open_samples(tmp_path / "s.parquet")
    assert len(samples) == 40
    groups = samples._file.metadata
    assert groups.num_row_groups > 1
    for g in range(groups.num_row_groups):  # a group closes as soon as it reaches group_tokens
        sizes = [len(ref[i][0]) for i in range(samples._group_starts[g], samples._group_starts[g + 1])]
        assert sum(sizes[:-1]) < 500
    for i in [39, 0, 17, 18, -1, 5]:  # out of order on purpose
        item = samples[i]
        ids, labels = ref[i]
        assert item["input_ids"].dtype == np.int64 and item["labels"].dtype == np.int64
        np.testing.assert_array_equal(item["input_ids"], ids)
        np.testing.assert_array_equal(item["labels"], labels)
        assert item["sample_id"] == f"x-{i % 40}" and item["doc_ids"] == ["a", "b"]
    assert [s["sample_id"] for s in samples] == [f"x-{i}" for i in range(40)]
    frame = samples.metadata_frame()
    assert list(frame["n_tokens"]) == [len(r[0]) for r in ref] and "input_ids" not in frame


def test_spans_are_lossless_and_reject_shifted_labels():
    ids = np.array([5, 6, 7, 8, 9, 10])
    labels = np.array([-100, 6, 7, -100, -100, 10])
    starts, ends = labels_to_spans(ids, labels)
    assert starts.tolist() == [1, 5] and ends.tolist() == [3, 6]
    np.testing.assert_array_equal(spans_to_labels(ids, starts, ends), labels)
    with pytest.raises(ValueError, match="unshifted"):
        labels_to_spans(ids, np.array([6, 7, -100, -100, -100, -100]))


def test_failed_write_publishes_nothing_and_folder_lookup(tmp_path):
    with pytest.raises(RuntimeError):
        with SampleWriter(tmp_path / "bad.parquet") as w:
            w.write([1, 2, 3], spans=([0], [3]))
            raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
    for name in ("8K", "16K"):
        with SampleWriter(tmp_path / f"{name}.parquet") as w:
            w.write([1, 2, 3], spans=([1], [3]), stage=name)
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"8K": {}, "16K": {}}}))
    assert open_samples(tmp_path, stage="16K")[0]["stage"] == "16K"
    assert open_samples(tmp_path, stage="8K")[0]["labels"].tolist() == [-100, 2, 3]
    with pytest.raises(ValueError, match="pass stage="):
        open_samples(tmp_path)
    with pytest.raises(FileNotFoundError, match="stages here"):
        open_samples(tmp_path, stage="1M")
    with pytest.raises(ValueError, match="unknown metadata"):
        SampleWriter(tmp_path / "x.parquet").write([1], spans=([], []), colour="red")


def test_file_is_a_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    with SampleWriter(tmp_path / "s.parquet") as w:
        w.write([1, 2, 3, 4], spans=([2], [4]), sample_id="a")
    ds = datasets.Dataset.from_parquet(str(tmp_path / "s.parquet"))
    assert ds[0]["input_ids"] == [1, 2, 3, 4] and ds[0]["label_starts"] == [2]
