"""Infrastructure: Parquet/JSON on fsspec, the response cache, storage, model files, the face detector, Dask batches."""
