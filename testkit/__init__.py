"""What the tests and the benchmarks share (no pytest in here; the fixtures live in tests/):

- :mod:`testkit.tiny_models`: tiny random models of every supported family, built from configs in
  code, and small data files;
- :mod:`testkit.hub_server`: a Hugging Face Hub-compatible HTTP server (standard library only);
- :mod:`testkit.services`: real service processes (``slimformer serve``, workers, Redis and
  Postgres helpers).

Installed with the project (``pip install -e '.[dev]'``), so ``tests/`` and ``bench/`` import it
without touching ``sys.path``. The library, the service and the workers never import it.
"""
