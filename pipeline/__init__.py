"""Pipeline stages: ingest (inputs -> validated rolls), build (rolls -> Zarr store), metrics, export."""
