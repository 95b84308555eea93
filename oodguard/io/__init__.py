"""Reading users' inputs with numpy alone: ``.npy``, ``.npz``, IDX; parquet when pyarrow is
installed (``parquet`` extra), folders of images when Pillow is (``images`` extra).

The runtime, the command line and the offline stages all read files through this package, so a
runtime-only install (``oodguard[cpu]``) reads everything its command line documents.
"""

from oodguard.io.arrays import check_magic, load_array, load_idx, npz_key
from oodguard.io.images import IMAGE_SUFFIXES, image_files, load_image_folder, load_images
from oodguard.io.parquet import parquet_column, read_row_group

__all__ = [
    "IMAGE_SUFFIXES",
    "check_magic",
    "image_files",
    "load_array",
    "load_idx",
    "load_image_folder",
    "load_images",
    "npz_key",
    "parquet_column",
    "read_row_group",
]
