import pytest
import transformers

from slimformer.data import encode_labels, load_text_file, make_batches
from slimformer.errors import DatasetError


def test_tsv_with_quotes_reads_every_row(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('sentence\tlabel\na "quoted" word\t1\nit \'s fine\t0\n')
    data = load_text_file(path)
    assert data.texts == ['a "quoted" word', "it 's fine"]
    assert data.labels == [1, 0]
    assert (data.text_column, data.label_column) == ("sentence", "label")


def test_jsonl_and_parquet(tmp_path):
    import pandas as pd

    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert load_text_file(tmp_path / "d.jsonl").texts == ["a", "b"]
    pd.DataFrame({"review": ["x", "y"], "sentence2": ["p", "q"]}).to_parquet(tmp_path / "d.parquet")
    data = load_text_file(tmp_path / "d.parquet", text_column="review")
    assert data.pairs == ["p", "q"] and data.labels is None


def test_missing_column_names_the_file_and_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhello,1\n")
    with pytest.raises(DatasetError) as err:
        load_text_file(path, text_column="review")
    assert (
        "d.csv" in str(err.value)
        and "'review'" in str(err.value)
        and "sentence, label" in str(err.value)
    )


def test_empty_file_and_header_only_file_are_clear_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="empty.csv is empty"):
        load_text_file(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("sentence,label\n")
    with pytest.raises(DatasetError, match="header.csv"):
        load_text_file(tmp_path / "header.csv")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_text_file(tmp_path / "nope.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_text_file(tmp_path / "d.xlsx")


def test_undecodable_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"\nnot json at all\n')
    with pytest.raises(DatasetError, match="bad.jsonl could not be read"):
        load_text_file(tmp_path / "bad.jsonl")


def test_string_labels_map_through_label2id_and_unknown_ones_are_named(tmp_path):
    config = transformers.BertConfig(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,positive\nb,negative\nc,1\n")
    assert encode_labels(load_text_file(path), config) == [1, 0, 1]
    path.write_text("text,label\na,positive\nb,neutral\nc,7\n")
    with pytest.raises(DatasetError) as err:
        encode_labels(load_text_file(path), config)
    assert "7, neutral" in str(err.value) and "negative=0, positive=1" in str(err.value)


def test_causal_lm_batches_mask_padding_in_labels(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    from slimformer.data import TextData

    batches = make_batches(
        tokenizer, TextData(["a b c d e", "a"]), task="text-generation", batch_size=2
    )
    labels, mask = batches[0]["labels"], batches[0]["attention_mask"]
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] >= 0).all()


@pytest.fixture
def dataset_folder(tmp_path):
    """A dataset laid out like a Hub dataset repo: one file per split, read by
    datasets.load_dataset(id)."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [
        f"{word} film {i},{label}"
        for i in range(20)
        for word, label in (("good", "positive"), ("bad", "negative"))
    ]
    (folder / "train.csv").write_text("sentence,label\n" + "\n".join(rows) + "\n")
    (folder / "validation.csv").write_text("sentence,label\n" + "\n".join(rows[:6]) + "\n")
    return folder


def test_hub_dataset_split_with_max_samples(dataset_folder):
    from slimformer.data import load_hub_dataset

    full = load_hub_dataset(str(dataset_folder), split="train", streaming=False)
    assert len(full) == 40 and full.source.endswith(":train") and full.label_column == "label"
    some = load_hub_dataset(str(dataset_folder), split="train", max_samples=5, seed=1)
    assert len(some) == 5 and set(some.texts) <= set(full.texts)
    assert (
        some.texts
        == load_hub_dataset(str(dataset_folder), split="train", max_samples=5, seed=1).texts
    )
    assert len(load_hub_dataset(str(dataset_folder), split="validation")) == 6


def test_large_hub_dataset_is_streamed_and_stops_at_max_samples(dataset_folder, monkeypatch):
    import datasets

    from slimformer.data import load_hub_dataset

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(k) or real(*a, **k))
    data = load_hub_dataset(
        str(dataset_folder), split="train", max_samples=7, stream_above_bytes=100
    )
    assert calls[-1]["streaming"] is True and len(data) == 7
    config = transformers.BertConfig(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    assert sorted(set(encode_labels(data, config))) <= [0, 1]
    load_hub_dataset(str(dataset_folder), split="train", max_samples=7)
    assert calls[-1]["streaming"] is False  # small: loaded whole, then cut


def test_unknown_hub_dataset_split_or_column_is_a_clear_error(dataset_folder, tmp_path):
    from slimformer.data import load_hub_dataset

    with pytest.raises(DatasetError) as err:
        load_hub_dataset(str(dataset_folder), split="test")
    assert "'test'" in str(err.value) and err.value.details["split"] == "test"
    with pytest.raises(DatasetError) as err:
        load_hub_dataset(str(dataset_folder), split="train", text_column="review")
    assert "'review'" in str(err.value) and err.value.details["column"] == "review"
    with pytest.raises(DatasetError, match="cannot load"):
        load_hub_dataset(str(tmp_path / "no-such-dataset"), split="train")


def test_class_label_ids_follow_the_names_to_the_models_label2id():
    import datasets

    from slimformer.data import table_to_text_data

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["positive", "negative"]),
        }
    )
    table = datasets.Dataset.from_dict(
        {"text": ["a", "b", "c"], "label": [0, 1, 0]}, features=features
    )
    data = table_to_text_data(table, source="reviews:train")
    assert (
        data.label_names == ["positive", "negative"]
        and data.subset([1]).label_names == data.label_names
    )
    named = transformers.BertConfig(
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    assert encode_labels(data, named) == [1, 0, 1]  # by name, whatever the order
    generic = transformers.BertConfig(num_labels=2)  # LABEL_0, LABEL_1: the ids are all there is
    assert encode_labels(data, generic) == [0, 1, 0]


def test_string_labels_match_regardless_of_case(tmp_path):
    config = transformers.BertConfig(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,Positive\nb,NEGATIVE\n")
    assert encode_labels(load_text_file(path), config) == [1, 0]


def test_undecodable_csv_and_corrupt_parquet_name_the_file(tmp_path):
    (tmp_path / "latin.csv").write_bytes(b"text,label\n" + bytes(range(128, 256)) + b",1\n")
    with pytest.raises(DatasetError, match="latin.csv") as err:
        load_text_file(tmp_path / "latin.csv")
    assert err.value.details["file"].endswith("latin.csv")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetError, match="broken.parquet could not be read"):
        load_text_file(tmp_path / "broken.parquet")


def test_empty_text_cells_name_the_column_and_row(tmp_path):
    path = tmp_path / "holes.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": null, "label": 0}\n')
    with pytest.raises(DatasetError) as err:
        load_text_file(path)
    assert (
        "holes.jsonl" in str(err.value) and "'text'" in str(err.value) and "row 2" in str(err.value)
    )
    assert err.value.details == {"file": "holes.jsonl", "column": "text"}
