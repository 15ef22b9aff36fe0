"""Loading text data (CSV, TSV, JSON lines, Parquet) with ``datasets``, mapping columns and labels,
batching.

Every failure names the file and the column: a missing column lists the columns the file has.

One module per responsibility:

* :mod:`~slimformer.data.text_data`: :class:`TextData`, what every loader returns;
* :mod:`~slimformer.data.files`: local data files and uploads (checked, read in memory within
  :func:`file_row_limits`);
* :mod:`~slimformer.data.hub_datasets`: Hub datasets, authorised with the job's token, pinned to
  the authorised commit, read through a temporary cache of each call's own;
* :mod:`~slimformer.data.columns`: the text, pair and label columns of a table, named or guessed;
* :mod:`~slimformer.data.batches`: labels as a model expects them, and tokenised batches.
"""

from slimformer.data.batches import encode_labels, make_batches
from slimformer.data.columns import (
    LABEL_COLUMN_GUESSES,
    PAIR_COLUMN_GUESSES,
    TEXT_COLUMN_GUESSES,
    table_to_text_data,
)
from slimformer.data.files import (
    RowLimits,
    check_data_file,
    file_row_limits,
    load_text_file,
    read_table,
)
from slimformer.data.hub_datasets import STREAM_ABOVE_BYTES, STREAMING_ROW_CAP, load_hub_dataset
from slimformer.data.text_data import TextData

__all__ = [
    "LABEL_COLUMN_GUESSES",
    "PAIR_COLUMN_GUESSES",
    "STREAMING_ROW_CAP",
    "STREAM_ABOVE_BYTES",
    "TEXT_COLUMN_GUESSES",
    "RowLimits",
    "TextData",
    "check_data_file",
    "encode_labels",
    "file_row_limits",
    "load_hub_dataset",
    "load_text_file",
    "make_batches",
    "read_table",
    "table_to_text_data",
]
