"""Parquet input columns (one sample per row, a list or fixed-size-list column): needs pyarrow,
the ``parquet`` extra; without it, one line names the extra
(:class:`~oodguard.errors.MissingDependencyError`)."""

from __future__ import annotations

import os
from typing import Any

from oodguard.extras import optional
from oodguard.io.arrays import pick_member

__all__ = ["parquet_column", "read_row_group"]


def _pq() -> Any:
    return optional("pyarrow.parquet", "reading parquet files", "parquet")


def parquet_column(path: str | os.PathLike[str], column: str | None, *, how: str = "column="
                   ) -> tuple[str, list[int]]:
    """``(column, rows per row group)``: the input column of a parquet file (``column``, or
    its only column; ``how`` names the argument in the message) and its row groups' sizes."""
    pf = _pq().ParquetFile(path)
    meta = pf.metadata
    column = pick_member(path, list(pf.schema_arrow.names), column, how=how, what="column")
    return column, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def read_row_group(path: str | os.PathLike[str], group: int, column: str | None) -> Any:
    """One row group's values of ``column``, as numpy (an object array of rows for list
    columns)."""
    columns = None if column is None else [column]
    table = _pq().ParquetFile(path).read_row_group(group, columns=columns)
    return table.column(0).to_numpy(zero_copy_only=False)
