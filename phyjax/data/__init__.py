"""Data: NIfTI I/O, BIDS loading, the embedded default dataset, slicing and splits."""
