"""MLflow for comparing methods: run names and tags (``run_info``), one child run per method
with shared metric names (``method_metrics``, ``hook``), a store kept inside the project and
free of runs left RUNNING (``store``). Import from the submodules (``compare`` reads
``method_metrics`` without loading Kedro)."""
