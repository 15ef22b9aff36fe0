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
    assert "d.csv" in str(err.value) and "'review'" in str(err.value) and "sentence, label" in str(err.value)


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
    config = transformers.BertConfig(num_labels=2, id2label={0: "negative", 1: "positive"},
                                     label2id={"negative": 0, "positive": 1})
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

    batches = make_batches(tokenizer, TextData(["a b c d e", "a"]), task="text-generation", batch_size=2)
    labels, mask = batches[0]["labels"], batches[0]["attention_mask"]
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] >= 0).all()
